//! The read socket's serving threads. Each runs one readiness loop (mio, epoll) over its
//! connections, in redis-server's order: every ready connection reads and is answered,
//! then every answer is written, then the thread waits for more.
//!
//! Why not a tokio task per connection, as the admin socket has: every request then took a
//! wake and two polls of a task and its nested futures, and recd spent about a tenth more
//! of the serving core per `GET` than Redis (profiled: one key, 50 clients, pinned); with
//! the loop it spends less (`docs/performance.md`, hot keys).
//!
//! A connection is registered for reading and for writing, edge-triggered, as tokio
//! registers its sockets; Redis watches writes only while a reply waits. Each reply the
//! client reads then brings the thread an event. Measured side by side before busy polling
//! (below; GET of one key, pinned, requests/s): with one client, 24.9k registered for both
//! against 20.7k for reading only (Redis 20.9k), as the thread was awake when the next
//! request came; with 50 clients, 261k against 252k (Redis 239k).
//!
//! Before it sleeps, a thread keeps looking for requests for a short window that follows
//! the gaps between them (`busy_poll.rs`): a request that finds the thread asleep costs
//! the client a wake-up of it.
//!
//! What a connection does is the admin path's (`connection.rs`): pipelined requests
//! answered in batches of at most [`REPLY_BATCH_BYTES`], requests read ahead while a reply
//! is written, long replies written part by part with the thread's other connections
//! served in between, writes bounded per call and per turn, the idle timeout, and at
//! shutdown every connection closed after the batch in hand.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream as StdStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::Role;
use super::busy_poll::BusyPoll;
use super::cmd::{self, Client, Flow, Now};
use super::connection::{
    Inbox, READ_AHEAD_BYTES, REPLY_BATCH_BYTES, WRITE_CALL_BYTES, WRITE_TURN_BYTES, refused_oversized, too_large,
};
use crate::daemon::Daemon;
use crate::resp;

/// The token of the waker that hands a thread new connections and the stop.
const WAKER: Token = Token(usize::MAX);

/// Bytes one read asks for (Redis's `PROTO_IOBUF_LEN`).
const READ_BYTES: usize = 16 << 10;

/// Bytes read from one connection in one turn, at most: a client that writes as fast as
/// it is read cannot keep the thread.
const READ_TURN_BYTES: usize = 1 << 20;

/// How often a thread looks for connections past the idle timeout.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The serving threads of one read socket.
pub struct ReadServer {
    threads: Vec<Thread>,
    stop: Arc<AtomicBool>,
    /// Connections open on all threads (handed over and not closed yet).
    live: Arc<AtomicUsize>,
}

struct Thread {
    handoff: mpsc::Sender<(u64, StdStream)>,
    waker: Arc<Waker>,
    join: std::thread::JoinHandle<()>,
}

impl ReadServer {
    /// Starts `threads` serving threads (at least one).
    pub fn start(threads: usize, daemon: &Arc<Daemon>) -> io::Result<ReadServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads.max(1))
            .map(|i| {
                let poll = Poll::new()?;
                let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
                let (handoff, incoming) = mpsc::channel();
                let serving = Loop::new(poll, incoming, Arc::clone(&stop), Arc::clone(&live), Arc::clone(daemon));
                let join = std::thread::Builder::new().name(format!("recd-serve-{i}")).spawn(move || serving.run())?;
                Ok(Thread { handoff, waker, join })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ReadServer { threads, stop, live })
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Serves `stream` (non-blocking) on one thread, round robin by `id`, for its whole life.
    pub fn hand(&self, id: u64, stream: StdStream) {
        let thread = &self.threads[(id as usize) % self.threads.len()];
        self.live.fetch_add(1, Ordering::Relaxed);
        if thread.handoff.send((id, stream)).is_err() {
            // The thread has ended (it panicked); the stream closes as it drops.
            self.live.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("the serving thread for connection {id} has stopped");
            return;
        }
        if let Err(e) = thread.waker.wake() {
            tracing::warn!("cannot wake the serving thread for connection {id}: {e}");
        }
    }

    /// Closes every connection after the batch in hand and waits for the threads to end.
    /// Blocks the calling thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for t in &self.threads {
            let _ = t.waker.wake();
        }
        for t in self.threads {
            if t.join.join().is_err() {
                tracing::error!("a serving thread panicked");
            }
        }
    }
}

/// One connection and what is under way on it.
struct Conn {
    stream: UnixStream,
    span: tracing::Span,
    client: Client,
    inbox: Inbox,
    /// Replies answered and not all written yet; `written` bytes of them are.
    out: resp::Reply,
    written: usize,
    /// Requests answered into `out`, and when the turn that answered them began: the
    /// read-latency histogram counts from there (the turn's reads come first) to the end
    /// of their write.
    answered: u64,
    answered_since: Instant,
    /// The rest of a long reply, asked for part by part once `out` is written.
    rest: Option<Box<dyn resp::MoreReply>>,
    /// The socket may hold bytes not read yet: an event said so, or a read stopped at a
    /// bound before the socket was drained.
    unread: bool,
    /// The client closed its side (or the socket failed), as an event said: reads go on
    /// to the end of input, past a short read, since no further event will come for it.
    hung_up: bool,
    /// The last read stopped at this turn's share ([`READ_TURN_BYTES`]): read on in the
    /// next turn, even while a write is blocked.
    read_turn_full: bool,
    /// The inbox may hold requests not looked at yet: bytes were read since, or answering
    /// stopped before its end (a full batch, a long reply). They are looked at in a later
    /// turn, though no event comes for them.
    unparsed: bool,
    /// A write would block: nothing more is written until the socket drains.
    blocked: bool,
    /// Close once `out` is written (QUIT, a protocol error, an oversized request, a
    /// failed read).
    closing: bool,
    /// Already in this turn's list.
    queued: bool,
    /// When the connection last read or wrote a byte (the start of that turn): the idle
    /// timeout counts from here.
    last_active: Instant,
}

impl Conn {
    fn new(id: u64, stream: UnixStream) -> Conn {
        let now = Instant::now();
        Conn {
            stream,
            span: tracing::debug_span!("conn", id, role = ?Role::Read),
            client: Client { id, role: Role::Read, name: None },
            inbox: Inbox::default(),
            out: resp::Reply::new(4096),
            written: 0,
            answered: 0,
            answered_since: now,
            rest: None,
            // The client may have written before the socket was registered.
            unread: true,
            hung_up: false,
            read_turn_full: false,
            unparsed: false,
            blocked: false,
            closing: false,
            queued: false,
            last_active: now,
        }
    }

    /// Drops what the connection owes (it closes without another write).
    fn abandon(&mut self) {
        self.out.clear();
        (self.rest, self.answered, self.unparsed, self.blocked, self.closing) = (None, 0, false, false, true);
    }
}

/// What a connection does after a turn.
#[derive(Debug, PartialEq)]
enum Next {
    /// Waits for an event.
    Wait,
    /// Has more to do without one: a long reply's next part, requests left unanswered,
    /// bytes left unread.
    Again,
    Close,
}

struct Loop {
    poll: Poll,
    incoming: mpsc::Receiver<(u64, StdStream)>,
    stop: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    daemon: Arc<Daemon>,
    conns: Slab<Conn>,
    /// Connections served in the next turn without an event.
    again: Vec<usize>,
    /// Where reads land before they join a connection's inbox (requests are small: the
    /// copy is cheaper than a buffer per connection kept read-sized).
    scratch: Vec<u8>,
}

impl Drop for Loop {
    /// The loop ended (shutdown, or a failure): its connections close as they drop, with
    /// requests read and not answered; they no longer count against `max_clients`.
    fn drop(&mut self) {
        let waiting = self.incoming.try_iter().count(); // handed over, never taken
        self.live.fetch_sub(self.conns.len() + waiting, Ordering::Relaxed);
    }
}

impl Loop {
    fn new(
        poll: Poll,
        incoming: mpsc::Receiver<(u64, StdStream)>,
        stop: Arc<AtomicBool>,
        live: Arc<AtomicUsize>,
        daemon: Arc<Daemon>,
    ) -> Loop {
        Loop { poll, incoming, stop, live, daemon, conns: Slab::new(), again: Vec::new(), scratch: vec![0; READ_BYTES] }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut turn: Vec<usize> = Vec::new();
        let idle = self.daemon.config.limits.idle_timeout;
        let mut idle_checked = Instant::now();
        let mut busy = BusyPoll::new(self.daemon.config.busy_poll);
        let mut last_work = Instant::now();
        loop {
            // Work in hand, or looking for more (busy polling), is a wait of zero, again and
            // again: mio rounds a timeout up to whole milliseconds.
            let busy_polling = self.again.is_empty() && busy.looking(last_work.elapsed());
            let sleeping = self.again.is_empty() && !busy_polling;
            let wait = if sleeping { idle.map(|_| IDLE_CHECK) } else { Some(Duration::ZERO) };
            if let Err(e) = self.poll.poll(&mut events, wait) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("serving thread cannot wait for events: {e}");
                break;
            }
            if sleeping {
                // Woken by a request, the waker (a new connection, the stop) or the idle
                // check: any of them is the gap the window follows.
                busy.slept(last_work.elapsed());
            } else if busy_polling && events.is_empty() {
                // A task that shares this core (the client, unpinned) runs first, as KVM's
                // halt polling stops when another task is runnable.
                std::thread::yield_now();
            }
            // Seen between turns: a connection whose reads and writes never wait cannot
            // hold up shutdown.
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            turn.clear();
            self.take_new_connections();
            for k in std::mem::take(&mut self.again) {
                self.queue(k, &mut turn);
            }
            for event in events.iter() {
                let k = event.token().0;
                let Some(conn) = self.conns.get_mut(k) else { continue }; // the waker, or closed
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    conn.unread = true;
                }
                if event.is_read_closed() || event.is_error() {
                    conn.hung_up = true;
                }
                if event.is_writable() {
                    conn.blocked = false;
                }
                self.queue(k, &mut turn);
            }
            if !turn.is_empty() {
                self.serve_turn(&turn);
                last_work = Instant::now();
            }
            if let Some(limit) = idle
                && idle_checked.elapsed() >= IDLE_CHECK
            {
                idle_checked = Instant::now();
                self.close_idle(limit);
            }
        }
    }

    fn queue(&mut self, k: usize, turn: &mut Vec<usize>) {
        if let Some(conn) = self.conns.get_mut(k)
            && !conn.queued
        {
            conn.queued = true;
            turn.push(k);
        }
    }

    fn take_new_connections(&mut self) {
        while let Ok((id, std_stream)) = self.incoming.try_recv() {
            let entry = self.conns.vacant_entry();
            let k = entry.key();
            let mut stream = UnixStream::from_std(std_stream);
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self.poll.registry().register(&mut stream, Token(k), interest) {
                tracing::warn!("cannot register connection {id}: {e}");
                self.live.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            entry.insert(Conn::new(id, stream));
            self.again.push(k);
        }
    }

    /// Reads and answers every connection of the turn, then writes every answer.
    fn serve_turn(&mut self, turn: &[usize]) {
        let began = Instant::now();
        for &k in turn {
            let conn = &mut self.conns[k];
            let span = conn.span.clone();
            let _entered = span.enter();
            read_and_answer(conn, &self.daemon, &mut self.scratch, began);
        }
        for &k in turn {
            let conn = &mut self.conns[k];
            conn.queued = false;
            let span = conn.span.clone();
            let _entered = span.enter();
            let next = match write_out(conn, began) {
                Ok(next) => next,
                Err(e) => {
                    tracing::debug!(id = conn.client.id, "connection closed: {e}");
                    Next::Close
                }
            };
            if conn.answered > 0 && conn.out.is_empty() {
                self.daemon.metrics.read_latency(conn.answered_since.elapsed(), conn.answered);
                conn.answered = 0;
            }
            match next {
                Next::Wait => {}
                Next::Again => self.again.push(k),
                Next::Close => self.close(k),
            }
        }
    }

    fn close(&mut self, k: usize) {
        let mut conn = self.conns.remove(k);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.live.fetch_sub(1, Ordering::Relaxed);
    }

    /// Closes the connections where nothing moved for `limit`: no byte read, none written.
    /// Replies still owed do not keep one open (as in Redis): a client that stopped reading
    /// and sending would hold its slot, its reply and its read-ahead for ever.
    fn close_idle(&mut self, limit: Duration) {
        let idle: Vec<usize> =
            self.conns.iter().filter(|(_, c)| c.last_active.elapsed() >= limit).map(|(k, _)| k).collect();
        for k in idle {
            tracing::debug!(id = self.conns[k].client.id, "idle for {limit:?}: closing");
            self.close(k);
        }
    }
}

/// Reads what the client sent and, unless replies are still being written, answers a
/// batch of its requests.
fn read_and_answer(conn: &mut Conn, daemon: &Arc<Daemon>, scratch: &mut [u8], began: Instant) {
    if conn.unread {
        let bound = READ_AHEAD_BYTES.max(daemon.config.limits.max_request_bytes + 1);
        if let Err(e) = read_input(conn, scratch, bound, began) {
            tracing::debug!(id = conn.client.id, "connection closed: {e}");
            conn.abandon(); // `write_out` closes it
            return;
        }
    }
    if conn.unparsed && conn.out.is_empty() && conn.rest.is_none() && !conn.closing {
        let answered = caught(conn, "a request", |c| answer(c, daemon)).unwrap_or(0);
        if answered > 0 {
            conn.answered = answered;
            conn.answered_since = began;
        }
    }
}

/// Reads until the socket is drained, the client closed its side, this turn's share is
/// read, or `bound` bytes wait unanswered; `now` is when the turn began.
fn read_input(conn: &mut Conn, scratch: &mut [u8], bound: usize, now: Instant) -> io::Result<()> {
    let mut this_turn = 0;
    conn.read_turn_full = false;
    while !conn.inbox.closed {
        if conn.inbox.unanswered() >= bound {
            return Ok(()); // `unread` stays: read on once requests are answered
        }
        if this_turn >= READ_TURN_BYTES {
            conn.read_turn_full = true;
            return Ok(());
        }
        match conn.stream.read(scratch) {
            Ok(0) => conn.inbox.closed = true,
            Ok(n) => {
                conn.inbox.buf.extend_from_slice(&scratch[..n]);
                conn.unparsed = true;
                conn.last_active = now;
                this_turn += n;
                if n < scratch.len() && !conn.hung_up {
                    // A short read drained the socket; a later byte brings a new event.
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.unread = false;
    Ok(())
}

/// Runs `what` (command or reply code) for `conn`. A panic in it closes this connection
/// only, the thread serving the others: it is logged, and what the connection owed is
/// dropped (None).
fn caught<T>(conn: &mut Conn, what: &str, run: impl FnOnce(&mut Conn) -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut *conn))) {
        Ok(value) => Some(value),
        Err(_) => {
            tracing::error!(id = conn.client.id, "{what} panicked: closing the connection");
            conn.abandon();
            None
        }
    }
}

/// Answers the complete requests in the inbox into `out`, up to [`REPLY_BATCH_BYTES`] of
/// replies (and of list bytes read to make them) or the start of a long reply; returns
/// how many.
fn answer(conn: &mut Conn, daemon: &Arc<Daemon>) -> u64 {
    let mut answered = 0;
    loop {
        if conn.out.batch_cost() >= REPLY_BATCH_BYTES {
            break;
        }
        if !conn.inbox.holds_whole_request() {
            conn.unparsed = false;
            break;
        }
        match resp::parse_request(&conn.inbox.buf[conn.inbox.start..]) {
            Ok(Some((_, n))) if too_large(n, daemon.config.limits.max_request_bytes, &mut conn.out) => {
                conn.closing = true;
                break;
            }
            Ok(Some((args, n))) => {
                conn.inbox.start += n;
                if args.is_empty() {
                    continue;
                }
                answered += 1;
                match cmd::execute_now(&args, daemon, &mut conn.client, &mut conn.out) {
                    Now::Done(Flow::Continue) => {}
                    Now::Done(Flow::Close) => {
                        conn.closing = true;
                        break;
                    }
                    Now::Later(_) => unreachable!("the read socket refuses every command that waits"),
                }
                if let Some(rest) = conn.out.take_rest() {
                    conn.rest = Some(rest);
                    break;
                }
            }
            Ok(None) => {
                conn.unparsed = false;
                break;
            }
            Err(e) => {
                resp::error(&mut conn.out, &format!("ERR {e}"));
                conn.closing = true;
                break;
            }
        }
    }
    conn.inbox.compact();
    if !conn.unparsed {
        conn.inbox.note_incomplete();
    }
    if !conn.closing && !conn.unparsed {
        conn.closing = refused_oversized(&conn.inbox, daemon.config.limits.max_request_bytes, &mut conn.out);
    }
    answered
}

/// Writes what `out` holds and says what the connection does next; `now` is when the turn
/// began.
fn write_out(conn: &mut Conn, now: Instant) -> io::Result<Next> {
    if conn.blocked {
        // Reading goes on while a write waits (see `connection.rs`); a socket that only
        // filled this turn's share sends no new event for what is left.
        return Ok(if conn.read_turn_full { Next::Again } else { Next::Wait });
    }
    if !conn.out.is_empty() {
        let before = conn.written;
        let written = write_some(&mut conn.stream, &conn.out, &mut conn.written)?;
        if conn.written > before {
            conn.last_active = now;
        }
        match written {
            Written::All => {
                conn.out.clear();
                conn.written = 0;
            }
            Written::Turn => return Ok(Next::Again),
            Written::Blocked => {
                conn.blocked = true;
                return Ok(Next::Wait);
            }
        }
    }
    if let Some(mut rest) = conn.rest.take() {
        match caught(conn, "a long reply", |c| rest.next_part(&mut c.out)) {
            Some(false) => conn.rest = Some(rest),
            Some(true) => {}
            None => return Ok(Next::Close),
        }
        return Ok(Next::Again);
    }
    if conn.closing {
        return Ok(Next::Close);
    }
    if conn.unread || conn.unparsed {
        return Ok(Next::Again);
    }
    if conn.inbox.closed {
        // Nothing more will come, and what is left can never become a request.
        return Ok(Next::Close);
    }
    // Waiting for the client: ten thousand idle connections hold a little each, whatever
    // their last pipeline took.
    conn.out.release_spare();
    Ok(Next::Wait)
}

#[derive(Debug, PartialEq)]
enum Written {
    All,
    /// This turn's share is written; the rest goes in a later turn.
    Turn,
    /// The socket is full.
    Blocked,
}

/// Writes `out` from byte `written` on, in calls of at most [`WRITE_CALL_BYTES`], until it
/// is all written, the socket is full, or [`WRITE_TURN_BYTES`] went in this turn.
fn write_some(stream: &mut impl Write, out: &resp::Reply, written: &mut usize) -> io::Result<Written> {
    let total = out.total_len();
    let mut this_turn = 0;
    while *written < total {
        let result = if out.has_stored() {
            let parts: smallvec::SmallVec<[io::IoSlice; 8]> =
                out.parts_from(*written, WRITE_CALL_BYTES).into_iter().map(io::IoSlice::new).collect();
            stream.write_vectored(&parts)
        } else {
            stream.write(&out.buf[*written..total.min(*written + WRITE_CALL_BYTES)])
        };
        match result {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                *written += n;
                this_turn += n;
                if this_turn >= WRITE_TURN_BYTES && *written < total {
                    return Ok(Written::Turn);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Written::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Written::All)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::server::testing::{daemon_in, long_reply};

    /// One serving thread for a daemon on the embedded defaults, with an empty store in `dir`.
    fn server_in(dir: &std::path::Path) -> ReadServer {
        ReadServer::start(1, &daemon_in(dir)).unwrap()
    }

    /// A connected pair: ours, non-blocking, for the server; the client's, blocking, whose
    /// reads fail after 20 s (a stalled connection fails its test instead of hanging it).
    fn pair() -> (StdStream, StdStream) {
        let (ours, theirs) = StdStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        (ours, theirs)
    }

    /// Sends `bytes` from another thread (the server may close before all are sent), then
    /// closes the sending side; returns what the client read until the server closed.
    fn exchange(theirs: StdStream, bytes: Vec<u8>) -> Vec<u8> {
        let mut sender = theirs.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = sender.write_all(&bytes);
            let _ = sender.shutdown(std::net::Shutdown::Write);
        });
        let got = read_to_close(theirs);
        writer.join().unwrap();
        got
    }

    /// What the client reads until the server closes; a reset counts as a close (the server
    /// closed with requests unread).
    fn read_to_close(mut theirs: StdStream) -> Vec<u8> {
        let mut got = Vec::new();
        match theirs.read_to_end(&mut got) {
            Err(e) if e.kind() != io::ErrorKind::ConnectionReset => panic!("{e} after {} bytes", got.len()),
            _ => got,
        }
    }

    /// A request after a full batch of replies is looked at though no event comes for it:
    /// here a malformed one, which gets its error and a close. (The connection is driven
    /// turn by turn, so the batch is full whatever the socket's pace.)
    #[test]
    fn what_follows_a_full_batch_is_answered_without_a_new_event() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = daemon_in(dir.path());
        let (ours, mut theirs) = pair();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).unwrap();
            got
        });
        let arg = "x".repeat(4000);
        let reply = format!("$4000\r\n{arg}\r\n");
        let batch = REPLY_BATCH_BYTES.div_ceil(reply.len()); // the last one fills it
        let mut conn = Conn::new(1, UnixStream::from_std(ours));
        let echo = format!("*2\r\n$4\r\nECHO\r\n$4000\r\n{arg}\r\n");
        conn.inbox.buf = [echo.repeat(batch), "*abc\r\n".into()].concat().into_bytes();
        (conn.unread, conn.unparsed) = (false, true);
        let mut scratch = vec![0; READ_BYTES];
        let mut turns = 0;
        let last = loop {
            turns += 1;
            assert!(turns < 100_000, "no end");
            read_and_answer(&mut conn, &daemon, &mut scratch, Instant::now());
            match write_out(&mut conn, Instant::now()).unwrap() {
                Next::Again => {}
                Next::Wait if conn.blocked => {
                    std::thread::sleep(Duration::from_millis(1));
                    conn.blocked = false; // as a writable event does
                }
                next => break next,
            }
        };
        assert_eq!(last, Next::Close, "after {turns} turns");
        drop(conn);
        let got = String::from_utf8(reader.join().unwrap()).unwrap();
        let replies = reply.repeat(batch);
        assert!(got.starts_with(&replies), "{} bytes", got.len());
        assert!(got[replies.len()..].starts_with("-ERR Protocol error"), "{}", &got[replies.len()..]);
    }

    /// ZSCORE walks its list in place: the bytes walked count towards the batch as reply
    /// bytes do, so a pipeline of them on a long list is answered a batch at a time (the
    /// thread's other connections served between two), while ZCARD reads the count alone.
    #[test]
    fn list_bytes_walked_end_a_batch_as_reply_bytes_do() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = daemon_in(dir.path());
        let mut staged = daemon.store.stage("big", "job", 1, crate::store::TableKind::Lists).unwrap();
        let mut list: Vec<(String, f32)> = (0..200_000).map(|i| (format!("item{i}"), i as f32)).collect();
        staged.put_user("u", &mut list).unwrap();
        daemon.store.publish(staged).unwrap();
        let (ours, _theirs) = pair();
        let mut conn = Conn::new(1, UnixStream::from_std(ours));
        let requests = ["ZCARD big:u\r\n".repeat(1000), "ZSCORE big:u item0\r\n".repeat(3)].concat();
        (conn.inbox.buf, conn.unparsed) = (requests.into_bytes(), true);
        // 200,000 entries of 15 bytes or so: one walk to the worst item is past 1 MiB.
        assert_eq!(answer(&mut conn, &daemon), 1001);
        assert_eq!(String::from_utf8_lossy(&conn.out.buf), ":200000\r\n".repeat(1000) + "$1\r\n0\r\n");
        for _ in 0..2 {
            conn.out.clear();
            assert_eq!(answer(&mut conn, &daemon), 1, "one walk a batch");
        }
        assert!(conn.inbox.buf[conn.inbox.start..].is_empty());
    }

    /// A client that sends the end of its input right after its last bytes, before the
    /// thread looks, is seen to close: one event says both.
    #[test]
    fn a_close_that_comes_with_the_last_bytes_closes_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let server = server_in(dir.path());
        for id in 1..=20 {
            let (ours, mut theirs) = pair();
            server.hand(id, ours);
            std::thread::sleep(Duration::from_millis(20)); // taken and registered
            theirs.write_all(b"*1\r\n$4\r\nPI").unwrap();
            theirs.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(read_to_close(theirs), b"", "connection {id}");
        }
        server.stop();
    }

    #[test]
    fn pipelined_requests_are_answered_in_order_and_the_connection_closes_after_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let server = server_in(dir.path());
        let (ours, mut theirs) = pair();
        // Larger than one read and one turn's read: answered over several turns.
        let requests = b"PING\r\n*2\r\n$4\r\nECHO\r\n$3\r\nabc\r\n".repeat(100_000);
        theirs.write_all(&requests[..7]).unwrap(); // before the server has the socket
        server.hand(1, ours);
        let got = exchange(theirs, requests[7..].to_vec());
        assert!(got == b"+PONG\r\n$3\r\nabc\r\n".repeat(100_000), "{} bytes", got.len());
        assert_eq!(server.connections(), 0, "closed after the client");
        server.stop();
    }

    #[test]
    fn at_shutdown_requests_waiting_are_not_answered_and_the_connection_closes() {
        let dir = tempfile::tempdir().unwrap();
        let server = server_in(dir.path());
        let (ours, mut theirs) = pair();
        theirs.write_all(&b"PING\r\n".repeat(1000)).unwrap();
        // Stopped before the thread can see the connection's requests: it must not answer.
        server.stop.store(true, Ordering::Release);
        server.hand(1, ours);
        server.stop();
        assert_eq!(read_to_close(theirs), b"");
    }

    #[test]
    fn an_oversized_request_gets_an_error_and_a_close_and_a_quit_an_ok_and_a_close() {
        let dir = tempfile::tempdir().unwrap();
        let server = server_in(dir.path());
        let (ours, theirs) = pair();
        server.hand(1, ours);
        // A bulk string announced larger than max_request_bytes (1 MiB), sent in part.
        let request = [b"*2\r\n$4\r\nECHO\r\n$2000000\r\n".to_vec(), vec![b'x'; 1_100_000]].concat();
        let got = String::from_utf8(exchange(theirs, request)).unwrap();
        assert!(got.starts_with("-ERR request larger than max_request_bytes (1048576)"), "{got}");
        // A whole one, sent at once: read within a turn or two, it is refused all the same.
        let (ours, theirs) = pair();
        server.hand(3, ours);
        let request = [b"*2\r\n$4\r\nECHO\r\n$1100000\r\n".to_vec(), vec![b'x'; 1_100_000], b"\r\n".to_vec()].concat();
        let got = String::from_utf8(exchange(theirs, request)).unwrap();
        assert!(
            got.starts_with("-ERR request larger than max_request_bytes (1048576)"),
            "{}",
            &got[..got.len().min(60)]
        );
        let (ours, mut theirs) = pair();
        server.hand(2, ours);
        theirs.write_all(b"PING\r\nQUIT\r\nPING\r\n").unwrap();
        assert_eq!(read_to_close(theirs), b"+PONG\r\n+OK\r\n");
        server.stop();
    }

    /// Written to a socket whatever the reader's pace, a long reply arrives whole and in
    /// order; the writer says when the socket is full instead of waiting.
    #[test]
    fn a_long_reply_written_to_a_slow_reader_arrives_whole() {
        let (reply, want) = long_reply();
        let (mut ours, mut theirs) = pair();
        let mut written = 0;
        // Nobody reads yet: the socket fills.
        assert_eq!(write_some(&mut ours, &reply, &mut written).unwrap(), Written::Blocked);
        assert!(written > 0 && written < want.len(), "{written}");
        let reader = std::thread::spawn(move || {
            let (mut got, mut buf) = (Vec::new(), vec![0u8; 100_003]);
            loop {
                let n = theirs.read(&mut buf).unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
            }
        });
        while write_some(&mut ours, &reply, &mut written).unwrap() != Written::All {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(ours);
        assert!(reader.join().unwrap() == want, "the bytes differ");
    }

    /// Where every write goes in at once, a turn still ends after its share, each call
    /// offered at most its bound.
    #[test]
    fn a_turn_writes_at_most_its_share_in_bounded_calls() {
        struct Calls(Vec<u8>, usize);
        impl Write for Calls {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.write_vectored(&[io::IoSlice::new(buf)])
            }
            fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                let n: usize = bufs.iter().map(|b| b.len()).sum();
                assert!(n <= WRITE_CALL_BYTES, "offered {n}");
                self.1 += 1;
                self.0.write_vectored(bufs)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (reply, want) = long_reply();
        let (mut sink, mut written, mut turns) = (Calls(Vec::new(), 0), 0, 0);
        while write_some(&mut sink, &reply, &mut written).unwrap() == Written::Turn {
            turns += 1;
            assert_eq!(sink.0.len(), turns * WRITE_TURN_BYTES, "a turn is its share exactly here");
        }
        assert!(sink.0 == want, "the bytes differ");
        assert_eq!((turns, sink.1), (want.len() / WRITE_TURN_BYTES, want.len().div_ceil(WRITE_CALL_BYTES)));
    }
}
