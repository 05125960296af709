//! Arbitrary bytes into the UDP flow's datagram decoders (u16 length + datagram, as a stream;
//! and the framed connection's whole DATA/END/ABORT records); every decoded datagram must
//! round-trip and be reached the same way byte by byte. Same harnesses as the property tests in
//! src/protocol/proptests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringtun::protocol::harness::datagram_round_trip(data);
    ringtun::protocol::harness::flow_record_round_trip(data);
});
