//! A job file's parser and validator on arbitrary text (checks: `recd::fuzzing::job_file`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    recd::fuzzing::job_file(data);
});
