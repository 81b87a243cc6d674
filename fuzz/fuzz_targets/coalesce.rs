//! Decrypted packets joined into trains for a container's queue.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flatnet::dataplane::fuzzing::coalesce(data));
