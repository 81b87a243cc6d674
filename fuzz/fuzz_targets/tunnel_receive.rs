//! Datagrams from the underlay: framing, MAC, Noise handshake, decryption, inner packets.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flatnet::dataplane::fuzzing::tunnel_receive(data));
