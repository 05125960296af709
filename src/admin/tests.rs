//! Unit tests of the admin HTTP core: head parsing, size bounds, the token check, encoding.

use super::*;

#[test]
fn parses_a_request_head() {
    let (req, len) =
        parse_head(b"POST /reload?x=1 HTTP/1.1\r\nHost: a\r\ncontent-length: 3").unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/reload");
    assert_eq!(req.query, "x=1");
    assert_eq!(len, 3);
}

#[test]
fn rejects_malformed_heads() {
    for head in [
        &b"GET /\r\n"[..],
        b"GET / HTTP/2",
        b"get / HTTP/1.1",
        b"GET x HTTP/1.1",
        b"GET / HTTP/1.1\r\nno-colon",
        b"GET / HTTP/1.1\r\nContent-Length: -1",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked",
        b"GET / HTTP/1.1 extra",
        b"\xff / HTTP/1.1",
    ] {
        assert!(
            matches!(parse_head(head), Err(ReadError::Malformed(_))),
            "{head:?}"
        );
    }
}

#[test]
fn huge_or_repeated_content_lengths_and_too_many_headers_are_refused() {
    for value in [
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999",
        "65537",
    ] {
        let head = format!("POST /x HTTP/1.1\r\nContent-Length: {value}");
        assert!(
            matches!(parse_head(head.as_bytes()), Err(ReadError::BodyTooLarge)),
            "{value}"
        );
    }
    let (_, len) = parse_head(b"POST /x HTTP/1.1\r\nContent-Length: 65536").unwrap();
    assert_eq!(len, MAX_BODY_BYTES);
    assert!(matches!(
        parse_head(b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1"),
        Err(ReadError::Malformed(_))
    ));
    let many = format!("GET / HTTP/1.1{}", "\r\nX: y".repeat(MAX_HEADERS + 1));
    assert!(matches!(
        parse_head(many.as_bytes()),
        Err(ReadError::HeadTooLarge)
    ));
}

#[test]
fn the_token_is_required_except_on_probes() {
    let req = |path: &str, auth: Option<&str>| Request {
        method: "GET".into(),
        path: path.into(),
        query: String::new(),
        body: Vec::new(),
        authorization: auth.map(Secret::new),
    };
    let token = Secret::new("t0ken");
    assert!(authorized(None, &req("/metrics", None)));
    assert!(authorized(Some(&token), &req("/healthz", None)));
    assert!(authorized(Some(&token), &req("/ready", None)));
    assert!(!authorized(Some(&token), &req("/metrics", None)));
    assert!(!authorized(Some(&token), &req("/metrics", Some("t0ken"))));
    assert!(!authorized(
        Some(&token),
        &req("/metrics", Some("Bearer t0ke"))
    ));
    assert!(!authorized(
        Some(&token),
        &req("/metrics", Some("Basic t0ken"))
    ));
    assert!(authorized(
        Some(&token),
        &req("/metrics", Some("Bearer t0ken"))
    ));
    assert!(authorized(
        Some(&token),
        &req("/reload", Some("bearer  t0ken"))
    ));
    assert!(!format!("{:?}", req("/x", Some("Bearer t0ken"))).contains("t0ken"));
}

#[test]
fn encodes_allow_and_omits_body_for_head() {
    let r = Response::method_not_allowed("GET, HEAD");
    let text = String::from_utf8(encode_response(&r, true)).unwrap();
    assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
    assert!(text.contains("\r\nAllow: GET, HEAD\r\n"));
    assert!(text.ends_with("\r\n\r\n"));
}
