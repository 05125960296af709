//! Arbitrary bytes into the PROXY protocol header decoder (v1 and v2); every decoded header must
//! round-trip and be reached the same way byte by byte. Same harness as the property tests in
//! src/protocol/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringtun::protocol::harness::proxy_header_round_trip(data);
});
