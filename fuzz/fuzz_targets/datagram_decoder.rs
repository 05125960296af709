//! Arbitrary bytes into the UDP flow's datagram decoder (u16 length + datagram, as a stream);
//! every decoded datagram must round-trip and be reached the same way byte by byte. Same
//! harness as the property tests in src/protocol/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringtun::protocol::harness::datagram_round_trip(data);
});
