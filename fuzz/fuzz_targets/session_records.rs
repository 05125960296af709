//! Arbitrary bytes into the session record decoder, whole and in pieces.
//! Same harness as the property tests in src/protocol/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringtun::protocol::harness::session_records_round_trip(data);
});
