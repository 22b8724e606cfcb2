//! RESP framing: parsing requests (arrays of bulk strings, or inline commands) and
//! replies (for the CLI's client), and writing replies into an output buffer.

use smallvec::SmallVec;

/// Limits that keep a hostile client from making us allocate without bound.
pub const MAX_BULK_LEN: usize = 16 * 1024 * 1024;
pub const MAX_ARRAY_LEN: usize = 1024 * 1024;
pub const MAX_INLINE_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<Frame>),
}

/// A request's arguments, borrowed from the input buffer; inline up to 8 (no allocation
/// per request on the read path).
pub type Args<'a> = SmallVec<[&'a [u8]; 8]>;

/// A parsed request's arguments and the bytes it used; `None`: incomplete, read more.
pub type Parsed<'a> = Option<(Args<'a>, usize)>;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("Protocol error: {0}")]
    Invalid(String),
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError::Invalid(msg.into()))
}

/// Parses one request: the command's arguments, and the bytes consumed. `Ok(None)`
/// means more bytes are needed.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<'_>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf);
    }
    let Some((n, mut at)) = read_line_int(buf, 1, "invalid multibulk length")? else { return Ok(None) };
    if n < 0 {
        return Ok(Some((Args::new(), at)));
    }
    let n = n as usize;
    if n > MAX_ARRAY_LEN {
        return invalid("invalid multibulk length");
    }
    let mut args = Args::with_capacity(n.min(64));
    for _ in 0..n {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return invalid(format!("expected '$', got '{}'", buf[at] as char));
        }
        let Some((len, start)) = read_line_int(buf, at + 1, "invalid bulk length")? else { return Ok(None) };
        if len < 0 || len as usize > MAX_BULK_LEN {
            return invalid("invalid bulk length");
        }
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return invalid("bulk string not terminated by CRLF");
        }
        args.push(&buf[start..end]);
        at = end + 2;
    }
    Ok(Some((args, at)))
}

fn parse_inline(buf: &[u8]) -> Result<Parsed<'_>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE_LEN {
            return invalid("too big inline request");
        }
        return Ok(None);
    };
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let args = line.split(|b| b.is_ascii_whitespace()).filter(|a| !a.is_empty()).collect();
    Ok(Some((args, nl + 1)))
}

/// How far an incomplete request has been checked, so that the next look goes on from
/// there ([`scan_request`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scan {
    /// Where the request begins in the caller's buffer; `usize::MAX`: no scan under way.
    pub from: usize,
    /// The first byte not checked yet, counted from the request's start; 0: not even its
    /// count of arguments.
    at: usize,
    /// Arguments not checked yet, once the count is read.
    remaining: usize,
}

impl Default for Scan {
    fn default() -> Self {
        Scan { from: usize::MAX, at: 0, remaining: 0 }
    }
}

impl Scan {
    pub fn starting_at(from: usize) -> Scan {
        Scan { from, ..Scan::default() }
    }
}

/// Whether `request` (from a request's first byte) holds the whole request, checked on
/// from `scan`, which it moves on. Parsing an incomplete request of many arguments again
/// from its start after every read of a client that sends it in small pieces costs the
/// square of its size; this looks at each argument's header once. Anything malformed
/// counts as whole: [`parse_request`] then says what is wrong. An inline request is
/// whole at its newline (at most [`MAX_INLINE_LEN`] bytes are looked through).
pub fn scan_request(request: &[u8], scan: &mut Scan) -> bool {
    if request.first() != Some(&b'*') {
        return true;
    }
    if scan.at == 0 {
        match read_line_int(request, 1, "") {
            Ok(Some((n, at))) if n > 0 && n as usize <= MAX_ARRAY_LEN => (scan.at, scan.remaining) = (at, n as usize),
            Ok(None) => return false,
            _ => return true,
        }
    }
    while scan.remaining > 0 {
        if scan.at >= request.len() {
            return false;
        }
        if request[scan.at] != b'$' {
            return true;
        }
        match read_line_int(request, scan.at + 1, "") {
            Ok(Some((len, start))) if len >= 0 && len as usize <= MAX_BULK_LEN => {
                let end = start + len as usize + 2;
                if request.len() < end {
                    return false;
                }
                if &request[end - 2..end] != b"\r\n" {
                    return true;
                }
                scan.at = end;
                scan.remaining -= 1;
            }
            Ok(None) => return false,
            _ => return true,
        }
    }
    true
}

/// Reads an integer terminated by CRLF starting at `at`; returns it and the next offset.
/// A line that is no integer is refused with `what` (Redis's words for that line).
fn read_line_int(buf: &[u8], at: usize, what: &str) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(rel) = buf.get(at..).and_then(|s| s.windows(2).position(|w| w == b"\r\n")) else {
        if buf.len() - at.min(buf.len()) > 32 {
            return invalid("length line too long");
        }
        return Ok(None);
    };
    match strict_int(&buf[at..at + rel]) {
        Some(n) => Ok(Some((n, at + rel + 2))),
        None => invalid(what),
    }
}

/// An integer as Redis reads one (`string2ll`): an optional `-`, then digits with no
/// leading zero; `0` itself, but not `-0`, `+1`, `01` or spaces, which Rust's own parse
/// would take.
pub fn strict_int(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    let canonical = match digits {
        [] => false,
        [b'0'] => digits.len() == text.len(),
        [first, ..] => *first != b'0' && digits.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Parses one reply frame (for the CLI client).
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let line_end =
        |from: usize| buf.get(from..).and_then(|s| s.windows(2).position(|w| w == b"\r\n")).map(|p| from + p);
    let text = |from: usize, to: usize| String::from_utf8_lossy(&buf[from..to]).into_owned();
    match buf[0] {
        b'+' | b'-' | b':' => {
            let Some(end) = line_end(1) else { return Ok(None) };
            let s = text(1, end);
            let frame = match buf[0] {
                b'+' => Frame::Simple(s),
                b'-' => Frame::Error(s),
                _ => Frame::Integer(s.parse().map_err(|_| ProtocolError::Invalid("bad integer".into()))?),
            };
            Ok(Some((frame, end + 2)))
        }
        b'$' => {
            let Some((len, start)) = read_line_int(buf, 1, "invalid length")? else { return Ok(None) };
            if len < 0 {
                return Ok(Some((Frame::Null, start)));
            }
            let end = start + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((Frame::Bulk(buf[start..end].to_vec()), end + 2)))
        }
        b'*' => {
            let Some((n, mut at)) = read_line_int(buf, 1, "invalid length")? else { return Ok(None) };
            if n < 0 {
                return Ok(Some((Frame::Null, at)));
            }
            let mut items = Vec::new();
            for _ in 0..n {
                let Some((item, used)) = parse_frame(&buf[at..])? else { return Ok(None) };
                items.push(item);
                at += used;
            }
            Ok(Some((Frame::Array(items), at)))
        }
        other => invalid(format!("unexpected reply type byte '{}'", other as char)),
    }
}

pub fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes an error; `msg` starts with its code word (`ERR`, `READONLY`, ...).
pub fn error(out: &mut Vec<u8>, msg: &str) {
    out.push(b'-');
    // CR or LF inside an error would break framing.
    out.extend(msg.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

/// `<tag><n>\r\n`: the header of integers, bulks and aggregates. itoa, not `write!`:
/// this runs several times per reply on the read path.
fn header(out: &mut Vec<u8>, tag: u8, n: impl itoa::Integer) {
    out.push(tag);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn integer(out: &mut Vec<u8>, n: i64) {
    header(out, b':', n);
}

pub fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    header(out, b'$', bytes.len());
    extend_in_chunks(out, bytes);
    out.extend_from_slice(b"\r\n");
}

/// Copies of at most this many bytes stay on glibc's vector path (see [`extend_in_chunks`]).
const COPY_CHUNK_BYTES: usize = 2048;

/// Appends `bytes` in chunks of [`COPY_CHUNK_BYTES`]. Above 2112 bytes, glibc 2.36's
/// `memcpy` on a CPU with fast short `rep movsb` (this AMD EPYC) switches to `rep movsb`,
/// which here runs four times slower when the destination lies 1 to 31 bytes past the
/// source modulo 64: a 3.7 kB list took 164 ns instead of 42. Where a value lands in a reply
/// decides that, so copying GET's JSON (see [`BY_REFERENCE_BYTES`]) would pay it on one read
/// in two. In chunks, the vector path copies it in 40-50 ns at any alignment.
fn extend_in_chunks(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.len() <= COPY_CHUNK_BYTES {
        return out.extend_from_slice(bytes);
    }
    out.reserve(bytes.len());
    for chunk in bytes.chunks(COPY_CHUNK_BYTES) {
        out.extend_from_slice(chunk);
    }
}

pub fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

pub fn array_len(out: &mut Vec<u8>, n: usize) {
    header(out, b'*', n);
}

/// A reply being written for one connection, in the protocol it chose with HELLO. Derefs
/// to its bytes, so the RESP2-only writers above apply to it as they are; what RESP3
/// writes differently (nulls, doubles, maps) goes through its methods.
///
/// Big stored values are not copied into `buf`: [`Reply::bulk_stored`] keeps a handle on
/// the value and where it goes, and [`Reply::slices`] gives the reply as `buf` pieces
/// around them, for one vectored write.
#[derive(Debug, Default)]
pub struct Reply {
    pub buf: Vec<u8>,
    pub resp3: bool,
    /// (offset in `buf` the value goes before, the stored value, its byte range, bytes of
    /// the stored values before it)
    stored: Vec<(usize, sled::IVec, std::ops::Range<usize>, usize)>,
    /// Bytes of the values in `stored`.
    stored_bytes: usize,
    /// The rest of a reply too long to build at once, made part by part.
    rest: Option<Box<dyn MoreReply>>,
    /// Bytes of stored values read to answer but not part of the reply (ZSCORE's walk of a
    /// list), counted with the reply's own towards the end of a batch.
    read_bytes: usize,
}

/// The rest of a long reply (ZRANGE over millions of entries): the connection writes what
/// the reply holds, lets the serving thread's other connections in, then asks for the next
/// part. Building such a reply at once took seconds, during which nobody else was served.
pub trait MoreReply: Send + Sync + std::fmt::Debug {
    /// Appends the next part to `out`; true when the reply is complete.
    fn next_part(&mut self, out: &mut Reply) -> bool;
}

/// Below this a value is copied into the reply. Measured here on a Unix socket (a reply and
/// its read, per value): copied in chunks and sent in one part, 2.32 µs at 3.7 kB against
/// 2.35 µs for a three-part `writev` of the stored value; at 6 kB the copy loses (3.39 against
/// 3.28 µs), and at 16 kB by a fifth. Served, the copy wins by more: GET of one hot key with
/// 50 clients, 167k against 153k requests/s with the old bound of 1 kB (side by side, 4
/// rounds each), and pipelined GET (`-P 16`) no slower.
const BY_REFERENCE_BYTES: usize = 4 << 10;

/// The most buffer capacity a reply keeps between batches: twice a batch's usual size
/// (`REPLY_BATCH_BYTES`, 1 MiB), so ordinary pipelines reuse their buffer.
const KEPT_CAPACITY: usize = 2 << 20;

/// The buffer capacity a reply keeps while its connection waits for requests.
const IDLE_CAPACITY: usize = 16 << 10;

impl Reply {
    pub fn new(capacity: usize) -> Reply {
        Reply {
            buf: Vec::with_capacity(capacity),
            resp3: false,
            stored: Vec::new(),
            stored_bytes: 0,
            rest: None,
            read_bytes: 0,
        }
    }

    /// Leaves the rest of the current reply to `rest` (see [`MoreReply`]).
    pub fn set_rest(&mut self, rest: Box<dyn MoreReply>) {
        self.rest = Some(rest);
    }

    /// The rest of a long reply, if the last command left one.
    pub fn take_rest(&mut self) -> Option<Box<dyn MoreReply>> {
        self.rest.take()
    }

    /// A bulk string of `value[range]`, a stored value: from [`BY_REFERENCE_BYTES`] up the
    /// reply keeps a handle on it and writes it from the cache; smaller ones (a 100-item
    /// list's JSON, 3.7 kB) are copied.
    pub fn bulk_stored(&mut self, value: &sled::IVec, range: std::ops::Range<usize>) {
        if range.len() < BY_REFERENCE_BYTES {
            bulk(&mut self.buf, &value[range]);
            return;
        }
        header(&mut self.buf, b'$', range.len());
        let before = self.stored_bytes;
        self.stored_bytes += range.len();
        self.stored.push((self.buf.len(), value.clone(), range, before));
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Bytes the reply will write, stored values included.
    pub fn total_len(&self) -> usize {
        self.buf.len() + self.stored_bytes
    }

    /// Whether the reply refers to stored values (else it is all in `buf`).
    pub fn has_stored(&self) -> bool {
        !self.stored.is_empty()
    }

    /// The reply's bytes in order, in parts for a vectored write (none empty).
    pub fn parts(&self) -> smallvec::SmallVec<[&[u8]; 8]> {
        self.parts_from(0, usize::MAX)
    }

    /// The reply's bytes from byte `at` on, at most `limit` of them, in parts for a
    /// vectored write (none empty). The stored value `at` falls in or before is found by a
    /// binary search: writing a reply of 100k stored values (a big MGET) in many calls
    /// costs each call what it writes, not a walk over every part.
    pub fn parts_from(&self, at: usize, limit: usize) -> smallvec::SmallVec<[&[u8]; 8]> {
        /// Adds what fits of `part` to `out`; false once the limit is reached.
        fn take<'a>(part: &'a [u8], left: &mut usize, out: &mut smallvec::SmallVec<[&'a [u8]; 8]>) -> bool {
            let part = &part[..part.len().min(*left)];
            if !part.is_empty() {
                out.push(part);
            }
            *left -= part.len();
            *left > 0
        }
        let (mut out, mut left) = (smallvec::SmallVec::new(), limit);
        let k = self.stored.partition_point(|(offset, _, range, before)| offset + before + range.len() <= at);
        let next = self.stored.get(k);
        let before = next.map_or(self.stored_bytes, |s| s.3);
        // Where `at` is: in `buf`, before stored value k (or after the last one), or in k.
        let (mut buf_from, mut value_from) = match next {
            Some((offset, _, _, _)) if at >= offset + before => (*offset, at - (offset + before)),
            _ => (at - before, 0),
        };
        for (offset, value, range, _) in &self.stored[k..] {
            let value = &value[range.start + value_from..range.end];
            if !take(&self.buf[buf_from..*offset], &mut left, &mut out) || !take(value, &mut left, &mut out) {
                return out;
            }
            (buf_from, value_from) = (*offset, 0);
        }
        take(&self.buf[buf_from..], &mut left, &mut out);
        out
    }

    /// Counts `bytes` of stored values read for the reply but not written into it.
    pub fn read_more(&mut self, bytes: usize) {
        self.read_bytes += bytes;
    }

    /// The work the batch of replies holds so far: the bytes it writes and those read to
    /// make it. A batch ends past `REPLY_BATCH_BYTES` of it, so a pipeline of ZSCOREs on a
    /// 5M-item list lets the thread's other connections in between.
    pub fn batch_cost(&self) -> usize {
        self.total_len() + self.read_bytes
    }

    /// Empties the reply for the next batch of requests. Capacity is kept up to
    /// [`KEPT_CAPACITY`]: one huge MGET must not hold its hundreds of MB for the rest of
    /// the pipeline it came in.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.stored.clear();
        self.stored_bytes = 0;
        self.read_bytes = 0;
        if self.buf.capacity() > KEPT_CAPACITY {
            self.buf.shrink_to(KEPT_CAPACITY);
        }
        if self.stored.capacity() > KEPT_CAPACITY / 64 {
            self.stored.shrink_to(0);
        }
    }

    /// Gives back all but [`IDLE_CAPACITY`] of an empty reply's buffers, for a connection
    /// that waits for its client: a pipeline's batches reuse theirs, an idle connection
    /// holds a few kB.
    pub fn release_spare(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > IDLE_CAPACITY {
            self.buf.shrink_to(IDLE_CAPACITY);
        }
        if self.stored.is_empty() {
            self.stored.shrink_to(0);
        }
    }

    pub fn null(&mut self) {
        if self.resp3 { self.buf.extend_from_slice(b"_\r\n") } else { null(&mut self.buf) }
    }

    /// A score: a double in RESP3, its text as a bulk string in RESP2.
    pub fn double(&mut self, s: f32) {
        if self.resp3 {
            self.buf.push(b',');
            write_score(&mut self.buf, s);
            self.buf.extend_from_slice(b"\r\n");
        } else {
            score(&mut self.buf, s);
        }
    }

    /// A map of `n` pairs: `%n` in RESP3, a flat array of 2n in RESP2.
    pub fn map_len(&mut self, n: usize) {
        if self.resp3 {
            header(&mut self.buf, b'%', n);
        } else {
            array_len(&mut self.buf, 2 * n);
        }
    }
}

impl std::ops::Deref for Reply {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for Reply {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

/// A sorted-set score as Redis prints it: the shortest text that reads back as the value.
pub fn score(out: &mut Vec<u8>, s: f32) {
    bulk(out, ScoreText::new(s).as_bytes());
}

/// A score's text (the shortest that reads back as the value; `inf`, `-inf`) appended to `out`.
pub fn write_score(out: &mut Vec<u8>, s: f32) {
    out.extend_from_slice(ScoreText::new(s).as_bytes());
}

#[cfg(test)]
fn format_score(s: f32) -> String {
    String::from_utf8(ScoreText::new(s).as_bytes().to_vec()).expect("score text is ASCII")
}

/// A score's text, formatted on the stack: a reply writes one per member, so no
/// allocation per score. Rust's shortest round-trip text of an f32 is at most 48 bytes
/// (the smallest subnormal in full: `-0.` and 45 digits); `inf` as Redis writes it.
struct ScoreText {
    buf: [u8; 64],
    len: usize,
}

impl ScoreText {
    fn new(s: f32) -> ScoreText {
        let mut text = ScoreText { buf: [0; 64], len: 0 };
        if s.is_infinite() {
            text.push(if s > 0.0 { "inf" } else { "-inf" });
        } else {
            let _ = std::fmt::Write::write_fmt(&mut text, format_args!("{s}"));
        }
        text
    }

    fn push(&mut self, part: &str) {
        self.buf[self.len..self.len + part.len()].copy_from_slice(part.as_bytes());
        self.len += part.len();
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for ScoreText {
    fn write_str(&mut self, part: &str) -> std::fmt::Result {
        if self.len + part.len() > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.push(part);
        Ok(())
    }
}

/// Encodes a request as an array of bulk strings (for the CLI client).
pub fn request(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    array_len(&mut out, args.len());
    for a in args {
        bulk(&mut out, a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After one huge reply (an MGET of 50,000 keys) the connection keeps a batch's worth of
    /// buffer, not the reply's size; an ordinary batch's buffer is kept for the next, and
    /// an idle connection gives it back.
    #[test]
    fn a_cleared_reply_keeps_a_few_batches_of_capacity_and_an_idle_one_little() {
        let mut reply = Reply::new(64);
        let value = sled::IVec::from(vec![7u8; BY_REFERENCE_BYTES]);
        for _ in 0..40_000 {
            reply.bulk_stored(&value, 0..BY_REFERENCE_BYTES);
        }
        bulk(&mut reply.buf, &vec![b'x'; 8 << 20]);
        assert!(reply.buf.capacity() > 8 << 20 && reply.stored.capacity() >= 40_000);
        reply.clear();
        assert!(reply.buf.capacity() <= KEPT_CAPACITY, "{}", reply.buf.capacity());
        assert!(reply.stored.capacity() <= KEPT_CAPACITY / 64, "{}", reply.stored.capacity());
        bulk(&mut reply.buf, &vec![b'x'; 1 << 20]);
        let kept = reply.buf.capacity();
        reply.clear();
        assert_eq!(reply.buf.capacity(), kept, "a batch's buffer serves the next");
        assert_eq!(reply.total_len(), 0);
        reply.release_spare();
        assert!(reply.buf.capacity() <= IDLE_CAPACITY, "{}", reply.buf.capacity());
    }

    /// A request of many arguments fed a byte at a time: the scan says "incomplete" until
    /// its last byte, never goes back, and each argument's header is read once (the point
    /// it has reached is past every argument that is whole).
    #[test]
    fn a_request_sent_in_pieces_is_scanned_on_from_where_it_stopped() {
        let args: Vec<Vec<u8>> = (0..500).map(|i| format!("a{i}").into_bytes()).collect();
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        let mut ends = Vec::new();
        for a in &args {
            request.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            request.extend_from_slice(a);
            request.extend_from_slice(b"\r\n");
            ends.push(request.len());
        }
        let mut scan = Scan::starting_at(0);
        let mut last_at = 0;
        for len in 1..request.len() {
            assert!(!scan_request(&request[..len], &mut scan), "whole at {len} of {}", request.len());
            assert!(scan.at >= last_at, "went back");
            let whole_args = ends.iter().filter(|&&e| e <= len).count();
            let first_arg = request.iter().position(|&b| b == b'$').unwrap();
            let want = match whole_args {
                0 if len < first_arg => 0,
                0 => first_arg,
                n => ends[n - 1],
            };
            assert_eq!(scan.at, want, "at {len}");
            last_at = scan.at;
        }
        assert!(scan_request(&request, &mut scan));
        let (parsed, n) = parse_request(&request).unwrap().unwrap();
        assert_eq!((parsed.len(), n), (500, request.len()));
        // malformed, or inline: whole at once, for the parse to judge
        for bad in [&b"*x\r\n"[..], b"*2\r\n:1\r\n", b"*1\r\n$-3\r\n", b"*2\r\n$1\r\nxyz", b"PING"] {
            assert!(scan_request(bad, &mut Scan::starting_at(0)), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn args<'a>(v: &[&'a str]) -> Args<'a> {
        v.iter().map(|s| s.as_bytes()).collect()
    }

    #[test]
    fn requests_parse_whole_partial_inline_and_pipelined() {
        let req = b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n";
        assert_eq!(parse_request(req).unwrap(), Some((args(&["PING", "hi"]), req.len())));
        for cut in 0..req.len() {
            assert_eq!(parse_request(&req[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(parse_request(b"PING  x\r\n").unwrap(), Some((args(&["PING", "x"]), 9)));
        let two = [&req[..], &req[..]].concat();
        let (_, used) = parse_request(&two).unwrap().unwrap();
        assert_eq!(parse_request(&two[used..]).unwrap().unwrap().1, req.len());
    }

    #[test]
    fn malformed_requests_are_protocol_errors() {
        let cases: &[&[u8]] =
            &[b"*1\r\n+PING\r\n", b"*x\r\n", b"*1\r\n$-5\r\n", b"*1\r\n$2\r\nabcd\r\n", b"*99999999\r\n"];
        for c in cases {
            assert!(parse_request(c).is_err(), "{:?}", String::from_utf8_lossy(c));
        }
    }

    #[test]
    fn replies_round_trip() {
        let mut out = Vec::new();
        array_len(&mut out, 4);
        simple(&mut out, "OK");
        integer(&mut out, -3);
        bulk(&mut out, b"x\r\ny");
        null(&mut out);
        let (frame, used) = parse_frame(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(
            frame,
            Frame::Array(vec![
                Frame::Simple("OK".into()),
                Frame::Integer(-3),
                Frame::Bulk(b"x\r\ny".to_vec()),
                Frame::Null
            ])
        );
        assert_eq!(format_score(0.25), "0.25");
    }

    #[test]
    fn stored_values_are_referenced_not_copied_and_the_slices_give_the_whole_reply() {
        let big = sled::IVec::from((0..12_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let small = sled::IVec::from(&b"0123456789"[..]);
        let mut reply = Reply::new(64);
        array_len(&mut reply, 3);
        reply.bulk_stored(&big, 5000..12_000);
        reply.bulk_stored(&small, 2..5);
        reply.bulk_stored(&big, 0..BY_REFERENCE_BYTES);
        let mut want = Vec::new();
        array_len(&mut want, 3);
        bulk(&mut want, &big[5000..]);
        bulk(&mut want, b"234");
        bulk(&mut want, &big[..BY_REFERENCE_BYTES]);
        let joined: Vec<u8> = reply.parts().concat();
        assert_eq!(joined, want);
        // From any byte, in parts of any size, the same bytes.
        for limit in [1, 2, 7, 100, 7000, usize::MAX] {
            for at in 0..=want.len() {
                let parts = reply.parts_from(at, limit);
                assert!(parts.iter().all(|p| !p.is_empty()), "an empty part at {at}");
                let end = want.len().min(at.saturating_add(limit));
                assert_eq!(parts.concat(), &want[at..end], "from {at}, at most {limit}");
            }
        }
        assert!(reply.buf.len() < 100, "the big values stay out of the buffer");
        reply.clear();
        assert!(reply.parts().is_empty() && reply.buf.is_empty());
        // One byte under the bound: copied.
        reply.bulk_stored(&big, 0..BY_REFERENCE_BYTES - 1);
        assert!(!reply.has_stored() && reply.buf.len() > BY_REFERENCE_BYTES - 1);
        assert_eq!(
            reply.parts().concat(),
            [format!("${}\r\n", BY_REFERENCE_BYTES - 1).as_bytes(), &big[..BY_REFERENCE_BYTES - 1], b"\r\n"].concat()
        );
    }

    #[test]
    fn a_bulk_copied_in_chunks_holds_every_byte_in_order() {
        let value: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        for len in [0, 1, COPY_CHUNK_BYTES - 1, COPY_CHUNK_BYTES, COPY_CHUNK_BYTES + 1, 3708, 10_000] {
            // After an odd prefix, as a value lands after other replies.
            let mut out = b"+OK\r\n".to_vec();
            bulk(&mut out, &value[..len]);
            let mut want = format!("+OK\r\n${len}\r\n").into_bytes();
            want.extend_from_slice(&value[..len]);
            want.extend_from_slice(b"\r\n");
            assert!(out == want, "length {len}");
        }
    }

    #[test]
    fn scores_format_on_the_stack_as_rust_prints_them() {
        let subnormal = f32::from_bits(1);
        for s in [0.25, -0.0, 1.0 / 3.0, 873.4375, f32::MAX, f32::MIN, subnormal, -subnormal, f32::MIN_POSITIVE] {
            assert_eq!(format_score(s), format!("{s}"), "{s:e}");
        }
        assert_eq!(format_score(f32::INFINITY), "inf");
        assert_eq!(format_score(f32::NEG_INFINITY), "-inf");
        let mut out = Vec::new();
        score(&mut out, -subnormal);
        assert_eq!(out, format!("$48\r\n{}\r\n", -subnormal).into_bytes());
    }
}
