//! PROXY header codec on literal bytes.

use super::*;

const MAX: usize = DEFAULT_MAX_PROXY_HEADER_BYTES;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn proxy(src: &str, dst: &str) -> ProxyHeader {
    ProxyHeader::Proxy {
        source: addr(src),
        destination: addr(dst),
    }
}

#[test]
fn v1_lines_decode() {
    let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET /";
    assert_eq!(
        decode_proxy_header(line, MAX),
        Ok(ProxyDecoded::Header(
            proxy("192.168.0.1:56324", "192.168.0.11:443"),
            ProxyVersion::V1,
            47
        ))
    );
    let line = b"PROXY TCP6 ::1 2001:db8::2 1 65535\r\n";
    assert_eq!(
        decode_proxy_header(line, MAX),
        Ok(ProxyDecoded::Header(
            proxy("[::1]:1", "[2001:db8::2]:65535"),
            ProxyVersion::V1,
            line.len()
        ))
    );
    let line = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    assert_eq!(
        decode_proxy_header(line, MAX),
        Ok(ProxyDecoded::Header(
            ProxyHeader::Local,
            ProxyVersion::V1,
            line.len()
        ))
    );
}

#[test]
fn v1_errors_are_named() {
    let bad: &[&[u8]] = &[
        b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",
        b"PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",
    ];
    for b in bad {
        let got = decode_proxy_header(b, MAX);
        assert!(
            matches!(got, Err(ProxyError::V1Malformed(_))),
            "{:?}: {got:?}",
            String::from_utf8_lossy(b)
        );
        assert_eq!(got.unwrap_err().reason(), "malformed");
    }
    let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
    assert_eq!(decode_proxy_header(&long, MAX), Err(ProxyError::V1TooLong));
    assert_eq!(ProxyError::V1TooLong.reason(), "oversized");
    assert_eq!(
        decode_proxy_header(b"GET / HTTP/1.1\r\n", MAX),
        Err(ProxyError::NotProxy)
    );
    assert_eq!(
        decode_proxy_header(b"PROXX", MAX),
        Err(ProxyError::NotProxy)
    );
}

#[test]
fn v2_decodes_ipv4_ipv6_local_and_skips_tlvs() {
    let mut b = V2_SIGNATURE.to_vec();
    b.extend_from_slice(&[0x21, 0x11, 0, 12 + 4]);
    b.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x01, 0xbb]);
    b.extend_from_slice(&[0x04, 0, 1, 0]); // a NOOP TLV
    b.extend_from_slice(b"rest");
    assert_eq!(
        decode_proxy_header(&b, MAX),
        Ok(ProxyDecoded::Header(
            proxy("10.0.0.1:12345", "10.0.0.2:443"),
            ProxyVersion::V2,
            32
        ))
    );
    let local = encode_proxy_header(ProxyVersion::V2, &ProxyHeader::Local);
    assert_eq!(&local[12..], &[0x20, 0x00, 0, 0]);
    assert_eq!(
        decode_proxy_header(&local, MAX),
        Ok(ProxyDecoded::Header(
            ProxyHeader::Local,
            ProxyVersion::V2,
            16
        ))
    );
    // LOCAL with addresses, UNIX and UDP keep the connection's own address.
    for fam in [0x11, 0x31, 0x12] {
        let mut b = V2_SIGNATURE.to_vec();
        let cmd = if fam == 0x11 { 0x20 } else { 0x21 };
        b.extend_from_slice(&[cmd, fam, 0, 216]);
        b.extend_from_slice(&[0; 216]);
        assert_eq!(
            decode_proxy_header(&b, MAX),
            Ok(ProxyDecoded::Header(
                ProxyHeader::Local,
                ProxyVersion::V2,
                232
            ))
        );
    }
}

#[test]
fn v2_errors_are_named() {
    let with = |fixed: [u8; 4], body: &[u8]| {
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&fixed);
        b.extend_from_slice(body);
        decode_proxy_header(&b, MAX)
    };
    assert_eq!(
        with([0x11, 0x11, 0, 12], &[0; 12]),
        Err(ProxyError::V2Version(1))
    );
    assert_eq!(
        with([0x22, 0x11, 0, 12], &[0; 12]),
        Err(ProxyError::V2Command(2))
    );
    assert_eq!(
        with([0x21, 0x41, 0, 12], &[0; 12]),
        Err(ProxyError::V2Family(0x41))
    );
    assert_eq!(
        with([0x21, 0x13, 0, 12], &[0; 12]),
        Err(ProxyError::V2Family(0x13))
    );
    assert_eq!(
        with([0x21, 0x21, 0, 12], &[0; 12]),
        Err(ProxyError::V2AddressTooShort { len: 12, needs: 36 })
    );
    let too_big = with([0x21, 0x11, 0xff, 0xff], &[]);
    assert_eq!(
        too_big,
        Err(ProxyError::TooLarge {
            len: 16 + 65535,
            max_bytes: MAX
        })
    );
    assert_eq!(too_big.unwrap_err().reason(), "oversized");
    // The version is checked as soon as its byte arrives.
    let mut early = V2_SIGNATURE.to_vec();
    early.push(0x31);
    assert_eq!(
        decode_proxy_header(&early, MAX),
        Err(ProxyError::V2Version(3))
    );
}

#[test]
fn every_prefix_needs_more() {
    let headers = [
        encode_proxy_header(ProxyVersion::V1, &proxy("1.2.3.4:5", "6.7.8.9:10")),
        encode_proxy_header(ProxyVersion::V2, &proxy("[::1]:5", "[::2]:10")),
        encode_proxy_header(ProxyVersion::V2, &ProxyHeader::Local),
    ];
    for h in &headers {
        for cut in 0..h.len() {
            match decode_proxy_header(&h[..cut], MAX) {
                Ok(ProxyDecoded::NeedMore(n)) => assert!(n >= 1 && cut + n <= h.len()),
                other => panic!("prefix of {cut} bytes gave {other:?}"),
            }
        }
    }
}

#[test]
fn written_headers_match_the_specification() {
    assert_eq!(
        encode_proxy_header(
            ProxyVersion::V1,
            &proxy("127.0.0.2:40000", "127.0.0.1:8080")
        ),
        b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 8080\r\n"
    );
    assert_eq!(
        encode_proxy_header(ProxyVersion::V1, &proxy("[::1]:1", "[::1]:2")),
        b"PROXY TCP6 ::1 ::1 1 2\r\n"
    );
    assert_eq!(
        encode_proxy_header(ProxyVersion::V1, &ProxyHeader::Local),
        b"PROXY UNKNOWN\r\n"
    );
    let v2 = encode_proxy_header(ProxyVersion::V2, &proxy("1.2.3.4:258", "5.6.7.8:80"));
    let mut want = V2_SIGNATURE.to_vec();
    want.extend_from_slice(&[0x21, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 0, 80]);
    assert_eq!(v2, want);
    // Mixed families are written as IPv6.
    let mixed = encode_proxy_header(ProxyVersion::V2, &proxy("1.2.3.4:1", "[::1]:2"));
    assert_eq!(mixed[13], 0x21);
    assert_eq!(
        decode_proxy_header(&mixed, MAX),
        Ok(ProxyDecoded::Header(
            proxy("[::ffff:1.2.3.4]:1", "[::1]:2"),
            ProxyVersion::V2,
            52
        ))
    );
}
