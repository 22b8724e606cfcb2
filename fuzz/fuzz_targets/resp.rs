//! The RESP request parser on arbitrary bytes (checks: `recd::fuzzing::resp`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| recd::fuzzing::resp(data));
