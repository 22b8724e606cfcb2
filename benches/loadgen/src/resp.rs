//! Just enough RESP for the load: the two read commands, encoded, and a reader that finds
//! where each reply ends (RESP2 and RESP3 types; an error reply fails the run).

/// What each request reads.
#[derive(Clone, Copy)]
pub enum Command {
    /// `ZREVRANGE key 0 9 WITHSCORES`: a top-10 list with scores.
    ZRevRange,
    /// `GET key`: the list as one JSON value.
    Get,
}

impl Command {
    pub fn parse(text: &str) -> anyhow::Result<Command> {
        match text {
            "zrevrange" => Ok(Command::ZRevRange),
            "get" => Ok(Command::Get),
            _ => anyhow::bail!("--command {text:?}: expected zrevrange or get"),
        }
    }

    /// The request for key number `key` (`<prefix><key as 12 digits>`).
    pub fn encode(&self, prefix: &str, key: u64) -> Vec<u8> {
        let key = format!("{prefix}{key:012}");
        let args: &[&[u8]] = match self {
            Command::ZRevRange => &[b"ZREVRANGE", key.as_bytes(), b"0", b"9", b"WITHSCORES"],
            Command::Get => &[b"GET", key.as_bytes()],
        };
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n", a.len()).as_bytes());
            out.extend(*a);
            out.extend(b"\r\n");
        }
        out
    }
}

/// Bytes read from a connection and not yet taken as replies.
#[derive(Default)]
pub struct Input {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

const READ_SIZE: usize = 64 * 1024;

impl Input {
    /// Room to read into: at least `READ_SIZE` bytes after what is held.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_SIZE {
            self.buf.resize(self.end + READ_SIZE, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into `spare()`.
    pub fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// Takes one whole reply if it has arrived; an error reply is an error.
    pub fn next_reply(&mut self) -> anyhow::Result<Option<()>> {
        match reply_len(&self.buf[self.start..self.end])? {
            Some(len) => {
                self.start += len;
                Ok(Some(()))
            }
            None => Ok(None),
        }
    }
}

/// The length of the reply at the start of `b`, None while it is incomplete.
fn reply_len(b: &[u8]) -> anyhow::Result<Option<usize>> {
    let Some(line_end) = b.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
    let line = &b[1..line_end];
    let after_line = line_end + 2;
    let number = || -> anyhow::Result<i64> { Ok(std::str::from_utf8(line)?.parse()?) };
    match b[0] {
        b'-' | b'!' => anyhow::bail!("error reply: {}", String::from_utf8_lossy(line)),
        b'+' | b':' | b',' | b'#' | b'_' | b'(' => Ok(Some(after_line)),
        b'$' | b'=' => match number()? {
            n if n < 0 => Ok(Some(after_line)),
            n => {
                let whole = after_line + n as usize + 2;
                Ok((b.len() >= whole).then_some(whole))
            }
        },
        b'*' | b'~' | b'>' | b'%' => {
            let n = number()?;
            let items = if b[0] == b'%' { n * 2 } else { n };
            let mut at = after_line;
            for _ in 0..items.max(0) {
                match reply_len(&b[at..])? {
                    Some(len) => at += len,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        other => anyhow::bail!("not a RESP reply: first byte {other:#04x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_resp_arrays_of_bulk_strings() {
        let get = Command::Get.encode("bench:", 42);
        assert_eq!(get, b"*2\r\n$3\r\nGET\r\n$18\r\nbench:000000000042\r\n");
        let z = Command::ZRevRange.encode("t:", 7);
        assert!(z.starts_with(b"*5\r\n$9\r\nZREVRANGE\r\n$14\r\nt:000000000007\r\n$1\r\n0\r\n"));
    }

    #[test]
    fn replies_end_where_resp_says_and_partial_ones_wait() {
        let top = b"*4\r\n$1\r\na\r\n$3\r\n1.5\r\n$1\r\nb\r\n$1\r\n1\r\n";
        assert_eq!(reply_len(top).unwrap(), Some(top.len()));
        for cut in 0..top.len() {
            assert_eq!(reply_len(&top[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(reply_len(b"$-1\r\nrest").unwrap(), Some(5));
        assert_eq!(reply_len(b"*0\r\n").unwrap(), Some(4));
        assert_eq!(reply_len(b"%1\r\n+k\r\n:1\r\n").unwrap(), Some(12));
        let err = reply_len(b"-ERR read-only\r\n").unwrap_err().to_string();
        assert!(err.contains("ERR read-only"), "{err}");
    }

    #[test]
    fn input_takes_replies_across_reads() {
        let mut input = Input::default();
        let bytes = b"$2\r\nhi\r\n+OK\r\n";
        for chunk in bytes.chunks(3) {
            input.spare()[..chunk.len()].copy_from_slice(chunk);
            input.filled(chunk.len());
        }
        assert_eq!(input.next_reply().unwrap(), Some(()));
        assert_eq!(input.next_reply().unwrap(), Some(()));
        assert_eq!(input.next_reply().unwrap(), None);
    }
}
