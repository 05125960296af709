//! Arbitrary bytes into the frame decoder; every decoded frame must round-trip.
//! Same harness as the property tests in src/protocol/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringtun::protocol::harness::decode_round_trip(data);
});
