//! Arbitrary bytes into the server's handshake path (init decoding in read-sized pieces, then the
//! credential decision). Same harness as the property tests in src/control/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ringtun::control::harness::server_handshake(data);
});
