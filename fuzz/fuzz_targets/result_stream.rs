//! The daemon's reading of a worker's stdout, into a store (checks: `recd::fuzzing::result_stream`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    recd::fuzzing::result_stream(data);
});
