//! One admin connection, a tokio task: answer every complete request the client sent
//! (pipelining), write the answers in batches, and keep reading while a batch is written.
//! (The read socket's connections run in the serving threads' event loops, `event_loop.rs`,
//! which do the same with the pieces shared from here.)
//!
//! Reading on while writing is what keeps a client that writes a long pipeline before it
//! reads anything (redis-rs sends a whole `pipe()` first) from deadlocking with us: both
//! would block on a full socket buffer. redis-server reads on for the same reason.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tracing::Instrument;

use super::Role;
use super::cmd::{self, Client, Flow};
use crate::daemon::Daemon;
use crate::resp;

/// Requests read ahead while replies are written, at most. A client that sends more
/// before reading any answer waits for the answers to drain, as a Redis client past
/// `client-query-buffer-limit` would be cut off; this bounds a connection's memory.
pub(super) const READ_AHEAD_BYTES: usize = 64 << 20;

/// Replies gathered before they are written: requests after this wait in the input, so a
/// long pipeline never builds all its answers in memory at once.
pub(super) const REPLY_BATCH_BYTES: usize = 1 << 20;

/// A connection's input buffer to start with, and the least it shrinks back to once it is
/// larger than [`LARGE_BUFFER_BYTES`] and three quarters empty.
const INITIAL_BUFFER_BYTES: usize = 4096;
const LARGE_BUFFER_BYTES: usize = 64 << 10;

/// Room made in the input buffer before each read ahead.
const READ_CHUNK_BYTES: usize = 64 << 10;

pub async fn serve(stream: UnixStream, id: u64, daemon: Arc<Daemon>, stop: watch::Receiver<bool>) {
    let span = tracing::debug_span!("conn", id, role = ?Role::Admin);
    if let Err(e) = handle(stream, id, daemon, stop).instrument(span).await {
        tracing::debug!(id, "connection closed: {e}");
    }
}

/// What the client sent and the server has not answered yet: `buf[start..]`.
#[derive(Default)]
pub(super) struct Inbox {
    pub(super) buf: Vec<u8>,
    /// Bytes of `buf` already answered. Moved past as requests are answered; the buffer
    /// is compacted only once they are half of it, so a long pipeline is not moved down
    /// after every batch.
    pub(super) start: usize,
    /// The client closed its side; what is in `buf` is all there will be.
    pub(super) closed: bool,
    /// How far the request at `start` was checked while it was incomplete.
    scan: resp::Scan,
}

impl Inbox {
    /// Whether the request at `start` is worth parsing: a request seen for the first time
    /// is parsed at once (it is most often whole); one found incomplete
    /// ([`Inbox::note_incomplete`]) is checked on from where the last look stopped, and
    /// parsed again only once whole (or malformed, which the parse then refuses).
    pub(super) fn holds_whole_request(&mut self) -> bool {
        if self.scan.from != self.start {
            return true;
        }
        let whole = resp::scan_request(&self.buf[self.start..], &mut self.scan);
        if whole {
            // The next request may begin at this same offset once the buffer is compacted.
            self.scan = resp::Scan::default();
        }
        whole
    }

    /// The request at `start` was parsed and found incomplete: the next reads are checked
    /// on from how far it goes now.
    pub(super) fn note_incomplete(&mut self) {
        if self.scan.from != self.start {
            self.scan = resp::Scan::starting_at(self.start);
            resp::scan_request(&self.buf[self.start..], &mut self.scan);
        }
    }

    pub(super) fn unanswered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Drops the answered bytes when they are half the buffer, and gives memory back
    /// once a long pipeline or a large request is over.
    pub(super) fn compact(&mut self) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() > LARGE_BUFFER_BYTES && self.buf.len() <= self.buf.capacity() / 4 {
            self.buf.shrink_to((self.buf.len() * 2).max(INITIAL_BUFFER_BYTES));
        }
    }
}

async fn handle(
    mut stream: UnixStream,
    id: u64,
    daemon: Arc<Daemon>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut inbox = Inbox { buf: Vec::with_capacity(INITIAL_BUFFER_BYTES), ..Inbox::default() };
    // Lives as long as the connection: it also remembers the protocol HELLO chose.
    let mut out = resp::Reply::new(4096);
    let mut client = Client { id, role: Role::Admin, name: None };
    let limits = daemon.config.limits;
    // Shutdown is seen two ways: between batches, by a look at the channel's version (an
    // atomic load), so a client that never lets a read or write wait cannot hold it up;
    // and while an I/O waits, by one wait kept for the whole connection, polled after the
    // I/O (`biased`). A fresh `changed()` in every select registered and unlinked a waiter
    // (two locks each, up to three selects a request); the kept one locks once per wait.
    // Requests read but not answered yet are dropped at shutdown.
    let seen = stop.clone();
    let stopped = async move {
        let _ = stop.changed().await;
    };
    tokio::pin!(stopped);
    loop {
        // (An error: the sender is gone, which happens only as the server ends.)
        if seen.has_changed().unwrap_or(true) {
            return Ok(());
        }
        let mut flow = Flow::Continue;
        let (mut batch_full, mut incomplete) = (false, false);
        while flow == Flow::Continue {
            if out.batch_cost() >= REPLY_BATCH_BYTES {
                batch_full = true;
                break;
            }
            if !inbox.holds_whole_request() {
                break;
            }
            match resp::parse_request(&inbox.buf[inbox.start..]) {
                Ok(Some((_, n))) if too_large(n, limits.max_request_bytes, &mut out) => flow = Flow::Close,
                Ok(Some((args, n))) => {
                    inbox.start += n;
                    if !args.is_empty() {
                        flow = cmd::execute(&args, &daemon, &mut client, &mut out).await;
                    }
                }
                Ok(None) => {
                    incomplete = true;
                    break;
                }
                Err(e) => {
                    resp::error(&mut out, &format!("ERR {e}"));
                    flow = Flow::Close;
                }
            }
            if let Some(rest) = out.take_rest() {
                // A long reply: written part by part, others served in between.
                tokio::select! {
                    biased;
                    r = write_in_parts(&mut stream, &mut out, rest, &mut inbox, limits.idle_timeout) => r?,
                    () = &mut stopped => return Ok(()),
                }
            }
        }
        inbox.compact();
        if incomplete {
            inbox.note_incomplete();
        }
        // Past here, what is left is the start of one request.
        if flow == Flow::Continue && !batch_full && refused_oversized(&inbox, limits.max_request_bytes, &mut out) {
            flow = Flow::Close;
        }
        let unread = inbox.buf.len();
        if !out.is_empty() {
            // A client that stopped reading must not hold up shutdown.
            tokio::select! {
                biased;
                r = write_reading(&mut stream, &out, &mut inbox, limits.idle_timeout) => r?,
                () = &mut stopped => return Ok(()),
            }
            out.clear();
        }
        if flow == Flow::Close {
            return Ok(());
        }
        if batch_full || inbox.buf.len() > unread {
            continue; // requests are waiting, or more came in during the write
        }
        if inbox.closed {
            return Ok(());
        }
        let read = tokio::select! {
            biased;
            r = read_some(&mut stream, &mut inbox.buf, limits.idle_timeout) => r?,
            () = &mut stopped => return Ok(()),
        };
        match read {
            None => {
                tracing::debug!(id, "idle for {:?}: closing", limits.idle_timeout);
                return Ok(());
            }
            Some(0) => return Ok(()),
            Some(_) => {}
        }
    }
}

/// Once a batch is answered, what is left of the inbox is the start of one request: past
/// `limit` bytes, it gets an error and the connection closes (true).
pub(super) fn refused_oversized(inbox: &Inbox, limit: usize, out: &mut resp::Reply) -> bool {
    too_large(inbox.unanswered(), limit, out)
}

/// A request of `bytes` (whole, or the part received) past `limit` gets an error, and the
/// connection closes (true). A whole request is checked too: one that arrives within one
/// read is parsed before the check of what is left over could see it.
pub(super) fn too_large(bytes: usize, limit: usize, out: &mut resp::Reply) -> bool {
    if bytes <= limit {
        return false;
    }
    resp::error(out, &format!("ERR request larger than max_request_bytes ({limit}): closing"));
    true
}

/// Writes `out` (the replies so far, ending with the first part of a long one), then each
/// further part `rest` makes, yielding the thread between parts; `out` is left empty.
async fn write_in_parts(
    stream: &mut UnixStream,
    out: &mut resp::Reply,
    mut rest: Box<dyn resp::MoreReply>,
    inbox: &mut Inbox,
    idle: Option<Duration>,
) -> std::io::Result<()> {
    loop {
        write_reading(stream, out, inbox, idle).await?;
        out.clear();
        tokio::task::yield_now().await;
        if rest.next_part(out) {
            return Ok(());
        }
    }
}

/// Writes `reply` while reading what the client sends meanwhile into `inbox`, up to
/// [`READ_AHEAD_BYTES`]. A client that takes none of the reply for `idle` is closed (an
/// error), as one that sends nothing is: otherwise a client that stopped reading would keep
/// its connection, its reply and its read-ahead for ever.
async fn write_reading(
    stream: &mut UnixStream,
    reply: &resp::Reply,
    inbox: &mut Inbox,
    idle: Option<Duration>,
) -> std::io::Result<()> {
    let (mut reader, mut writer) = stream.split();
    let write = write_reply(&mut writer, reply, idle);
    tokio::pin!(write);
    // Most replies fit the socket buffer and are written at once: no read ahead, and no
    // buffer grown for it.
    tokio::select! {
        biased;
        r = &mut write => return r,
        _ = std::future::ready(()) => {}
    }
    loop {
        if inbox.closed || inbox.unanswered() >= READ_AHEAD_BYTES {
            return write.await;
        }
        inbox.buf.reserve(READ_CHUNK_BYTES);
        tokio::select! {
            r = &mut write => return r,
            r = reader.read_buf(&mut inbox.buf) => {
                if r? == 0 {
                    inbox.closed = true;
                }
            }
        }
    }
}

/// Bytes written to one connection before the thread is handed to the others (a yield
/// here, the end of the connection's turn in `event_loop.rs`): a client reading a 218 MB
/// value as fast as the socket goes would otherwise keep the thread (a write that never
/// blocks never yields).
pub(super) const WRITE_TURN_BYTES: usize = 1 << 20;

/// Bytes offered to one write call. Linux copies all it is given while the reader keeps
/// draining the socket: one `writev` of a 218 MB value took 272 ms, the thread's other
/// connections waiting.
pub(super) const WRITE_CALL_BYTES: usize = 256 << 10;

/// Writes the whole reply with vectored writes: stored values go from the read cache to
/// the socket without a copy into the reply buffer. Each call is offered at most
/// [`WRITE_CALL_BYTES`], and the thread is yielded after every [`WRITE_TURN_BYTES`].
/// Each call that waits more than `idle` for the client to take a byte fails the write.
async fn write_reply<W: AsyncWrite + Unpin>(
    stream: &mut W,
    reply: &resp::Reply,
    idle: Option<Duration>,
) -> std::io::Result<()> {
    if !reply.has_stored() && reply.buf.len() <= WRITE_CALL_BYTES {
        // The common case, a few small replies: plain writes, most often one.
        let mut at = 0;
        while at < reply.buf.len() {
            match taken_within(idle, stream.write(&reply.buf[at..])).await? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => at += n,
            }
        }
        return Ok(());
    }
    let slices = reply.parts();
    let (mut at, mut offset, mut turn) = (0, 0, 0);
    while at < slices.len() {
        let batch = bounded(&slices[at..], offset, WRITE_CALL_BYTES);
        if batch.is_empty() {
            break;
        }
        let mut n = taken_within(idle, stream.write_vectored(&batch)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        turn += n;
        // Move past what was written: whole slices, then into the next one.
        while n > 0 && at < slices.len() {
            let left = slices[at].len() - offset;
            if n >= left {
                n -= left;
                at += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
        if turn >= WRITE_TURN_BYTES {
            turn = 0;
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

/// A write call's outcome, or a `TimedOut` error once it waited `idle` for the client.
async fn taken_within(
    idle: Option<Duration>,
    write: impl std::future::Future<Output = std::io::Result<usize>>,
) -> std::io::Result<usize> {
    let Some(limit) = idle else { return write.await };
    tokio::time::timeout(limit, write).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("the client took no reply for {limit:?}")))
    })
}

/// The first `max` bytes of `slices`, the first one from byte `offset` on.
pub(super) fn bounded<'a>(
    slices: &[&'a [u8]],
    offset: usize,
    max: usize,
) -> smallvec::SmallVec<[std::io::IoSlice<'a>; 8]> {
    let mut out = smallvec::SmallVec::new();
    let mut room = max;
    for (k, bytes) in slices.iter().enumerate() {
        let bytes = if k == 0 { &bytes[offset..] } else { *bytes };
        if room == 0 {
            break;
        }
        let take = bytes.len().min(room);
        if take > 0 {
            out.push(std::io::IoSlice::new(&bytes[..take]));
        }
        room -= take;
    }
    out
}

/// Reads what the client sent; `None` when it stayed silent past the idle timeout.
async fn read_some(
    stream: &mut UnixStream,
    input: &mut Vec<u8>,
    idle: Option<std::time::Duration>,
) -> std::io::Result<Option<usize>> {
    match idle {
        None => stream.read_buf(input).await.map(Some),
        Some(limit) => match tokio::time::timeout(limit, stream.read_buf(input)).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::testing::{daemon_in, long_reply};

    /// What a client that sends 1,000 PINGs and closes its sending side reads until the
    /// server closes the connection.
    async fn served(stop: watch::Receiver<bool>) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(&b"PING\r\n".repeat(1000)).await.unwrap();
        theirs.shutdown().await.unwrap();
        // The requests are seen as readable before the connection is served: its reads and
        // writes never wait, so only the check between batches can see a stop.
        ours.readable().await.unwrap();
        let daemon = daemon_in(dir.path());
        let server = tokio::spawn(handle(ours, 1, daemon, stop));
        let mut got = Vec::new();
        // Closed with requests unread, the server's end resets: a close all the same.
        match theirs.read_to_end(&mut got).await {
            Err(e) if e.kind() != std::io::ErrorKind::ConnectionReset => panic!("{e}"),
            _ => {}
        }
        server.await.unwrap().unwrap();
        got
    }

    /// At shutdown, requests waiting are not answered and the connection closes, though
    /// no read or write of it would wait; also when the server's sender is gone.
    #[tokio::test]
    async fn a_connection_with_requests_waiting_closes_at_shutdown_unanswered() {
        let (tx, rx) = watch::channel(false);
        assert_eq!(served(rx.clone()).await, b"+PONG\r\n".repeat(1000), "running: all answered");
        tx.send(true).unwrap();
        assert_eq!(served(rx.clone()).await, b"", "stopped before a reply");
        drop(tx);
        assert_eq!(served(rx).await, b"", "the sender gone");
    }

    /// A reply of stored values far larger than one write call arrives whole and in order,
    /// whatever the reader's pace.
    #[tokio::test]
    async fn a_long_reply_written_in_bounded_calls_arrives_whole() {
        let (reply, want) = long_reply();
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 100_003];
            loop {
                let n = theirs.read(&mut buf).await.unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
                tokio::task::yield_now().await;
            }
        });
        write_reply(&mut ours, &reply, None).await.unwrap();
        drop(ours);
        assert!(reader.await.unwrap() == want, "the bytes differ");
    }

    /// A client that takes no byte of a reply for the idle time fails the write, which
    /// closes its connection, instead of holding it for ever: a long reply written in
    /// parts, and a short one to a socket whose buffer is full.
    #[tokio::test]
    async fn a_reply_the_client_does_not_take_fails_after_the_idle_time() {
        let idle = Duration::from_millis(200);
        let (long, _) = long_reply();
        let mut short = resp::Reply::new(64);
        resp::simple(&mut short, "PONG");
        for (what, reply, fill) in [("long", &long, false), ("short", &short, true)] {
            let (mut ours, _theirs) = UnixStream::pair().unwrap();
            while fill && ours.try_write(&[0u8; 4096]).is_ok() {}
            let started = std::time::Instant::now();
            let write = write_reply(&mut ours, reply, Some(idle));
            let outcome = tokio::time::timeout(Duration::from_secs(30), write).await;
            let error = outcome.unwrap_or_else(|_| panic!("{what}: still waiting after 30 s")).unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{what}: {error}");
            assert!(started.elapsed() >= idle, "{what}: failed before the idle time");
        }
        // A client that takes its reply slowly, a part every quarter of the idle time, is
        // not idle: the idle time bounds each wait, not the whole reply.
        let idle = Duration::from_secs(1);
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let reader = tokio::spawn(async move {
            let (mut got, mut buf) = (Vec::new(), vec![0u8; 256 << 10]);
            let started = std::time::Instant::now();
            loop {
                tokio::time::sleep(idle / 4).await;
                match theirs.read(&mut buf).await.unwrap() {
                    0 => return (got, started.elapsed()),
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let (reply, want) = long_reply();
        write_reply(&mut ours, &reply, Some(idle)).await.unwrap();
        drop(ours);
        let (got, took) = reader.await.unwrap();
        assert!(got == want, "the bytes differ");
        assert!(took > 2 * idle, "the reply took {took:?}: too fast to show the idle time is per wait");
    }

    #[test]
    fn the_inbox_moves_answered_bytes_down_only_once_they_are_half_of_it() {
        let mut inbox = Inbox { buf: b"abcdefgh".to_vec(), start: 3, ..Inbox::default() };
        inbox.compact();
        assert_eq!((inbox.buf.as_slice(), inbox.start), (b"abcdefgh".as_slice(), 3), "3 of 8: kept");
        inbox.start = 4;
        inbox.compact();
        assert_eq!((inbox.buf.as_slice(), inbox.start), (b"efgh".as_slice(), 0));
        // A buffer grown by a long pipeline shrinks once mostly empty.
        let mut big = Inbox { buf: Vec::with_capacity(8 << 20), ..Inbox::default() };
        big.buf.extend_from_slice(&[b'x'; 1000]);
        big.start = 1000;
        big.compact();
        assert!(big.buf.is_empty() && big.buf.capacity() < LARGE_BUFFER_BYTES, "{}", big.buf.capacity());
    }

    #[test]
    fn a_write_call_is_offered_at_most_its_bound() {
        let parts: [&[u8]; 3] = [b"abc", b"defgh", b"ij"];
        let joined = |v: smallvec::SmallVec<[std::io::IoSlice<'_>; 8]>| {
            v.iter().flat_map(|s| s.iter().copied()).collect::<Vec<u8>>()
        };
        assert_eq!(joined(bounded(&parts, 0, 100)), b"abcdefghij");
        assert_eq!(joined(bounded(&parts, 1, 5)), b"bcdef");
        assert_eq!(joined(bounded(&parts[1..], 4, 2)), b"hi");
        assert!(bounded(&parts, 3, 0).is_empty());
    }
}
