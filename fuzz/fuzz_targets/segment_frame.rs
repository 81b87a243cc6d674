//! Frames from a container's offload queue (virtio-net header + packet or TSO train).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flatnet::dataplane::fuzzing::segment_frame(data));
