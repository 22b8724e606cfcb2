//! The RESP request parser on arbitrary bytes: it never panics, a parsed request never
//! claims more bytes than it was given (or none), and what follows it parses on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../daemon/src/server/resp.rs"]
#[allow(dead_code)]
mod resp;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match resp::parse_request(&data[at..]) {
            Ok(Some((_, used))) => {
                assert!(used > 0 && used <= data.len() - at, "parsed {used} bytes of {}", data.len() - at);
                at += used;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = resp::parse_frame(data);
});
