//! Socket commands, one module each. [`Command::from_args`] parses a request into a
//! typed command (or the error reply for it); [`execute`] runs it.
//!
//! Keys are `<table>:<user>`: the table is everything before the first `:`.

mod client;
mod command;
mod config;
mod discard;
mod drop;
mod echo;
mod evalrecord;
mod exists;
mod get;
mod hello;
mod hexists;
mod hget;
mod hgetall;
mod history;
mod hkeys;
mod hlen;
mod hmget;
mod import;
mod info;
mod jobs;
mod lineage;
mod mget;
mod models;
mod pause;
mod ping;
mod plugins;
mod progress;
mod promote;
mod reload;
mod rollback;
mod run;
mod select;
mod status;
mod type_cmd;
mod verify;
mod zcard;
mod zrange;
mod zrevrange;
mod zscore;

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

use super::Role;
use crate::daemon::Daemon;
use crate::resp::{self, Reply};
use crate::store::{ServedTable, TableKind, decode_hash};

/// The user key under which a cold-start table publishes its list for anyone.
const DEFAULT_USER: &[u8] = recd_plugin_api::contract::DEFAULT_USER.as_bytes();

/// Per-connection state commands may read or change.
pub struct Client {
    pub id: u64,
    pub role: Role,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

pub enum Command<'a> {
    Ping(ping::Ping<'a>),
    Echo(echo::Echo<'a>),
    Hello(hello::Hello),
    Introspect(command::CommandCmd),
    ConfigGet(config::ConfigGet),
    Client(client::ClientCmd),
    Select(select::Select),
    Exists(exists::Exists<'a>),
    ZRange(zrange::ZRange<'a>),
    ZCard(zcard::ZCard<'a>),
    ZScore(zscore::ZScore<'a>),
    Get(get::Get<'a>),
    MGet(mget::MGet<'a>),
    HGetAll(hgetall::HGetAll<'a>),
    HGet(hget::HGet<'a>),
    HMGet(hmget::HMGet<'a>),
    HKeys(hkeys::HKeys<'a>),
    HLen(hlen::HLen<'a>),
    HExists(hexists::HExists<'a>),
    Type(type_cmd::Type<'a>),
    Info(info::Info),
    Quit,
    Run(run::Run),
    Reload,
    Status(status::Status),
    Lineage(lineage::Lineage),
    Jobs(jobs::Jobs),
    History(history::History),
    Progress(progress::Progress),
    Plugins,
    Pause(pause::Pause),
    Rollback(rollback::Rollback),
    Models(models::Models),
    Promote(promote::Promote),
    Discard(discard::Discard),
    Drop(drop::Drop),
    Import(import::Import),
    Verify,
    EvalRecord(evalrecord::EvalRecord),
}

/// Commands that change data in Redis: answered with `-READONLY`.
const WRITE_COMMANDS: &[&str] = &[
    "set",
    "setnx",
    "setex",
    "psetex",
    "mset",
    "msetnx",
    "getset",
    "getdel",
    "getex",
    "append",
    "del",
    "unlink",
    "incr",
    "incrby",
    "incrbyfloat",
    "decr",
    "decrby",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "persist",
    "rename",
    "renamenx",
    "move",
    "copy",
    "restore",
    "zadd",
    "zincrby",
    "zrem",
    "zremrangebyrank",
    "zremrangebyscore",
    "zremrangebylex",
    "zpopmin",
    "zpopmax",
    "bzpopmin",
    "bzpopmax",
    "zunionstore",
    "zinterstore",
    "zdiffstore",
    "zrangestore",
    "hset",
    "hsetnx",
    "hmset",
    "hdel",
    "hincrby",
    "hincrbyfloat",
    "lpush",
    "rpush",
    "lpushx",
    "rpushx",
    "lpop",
    "rpop",
    "lset",
    "lrem",
    "ltrim",
    "linsert",
    "sadd",
    "srem",
    "spop",
    "smove",
    "flushdb",
    "flushall",
    "setrange",
    "setbit",
    "pfadd",
    "xadd",
    "geoadd",
    "swapdb",
];

/// What a command parse can fail with: the error reply's text.
pub type ParseResult<T> = Result<T, String>;

/// Runs a store call on the blocking pool, never on a serving thread or the runtime's own
/// (a write ends in a sync, which waits for whatever else the filesystem has to write; a
/// verify scans the store). A task that panicked answers as the store unavailable.
async fn on_blocking_pool<T: Send + 'static>(
    command: &str,
    call: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, crate::store::StoreError> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or_else(|e| Err(crate::store::StoreError::Unavailable(format!("{command} task failed: {e}"))))
}

pub fn wrong_args(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

pub fn not_integer() -> String {
    "ERR value is not an integer or out of range".to_string()
}

pub fn parse_int(arg: &[u8]) -> ParseResult<i64> {
    resp::strict_int(arg).ok_or_else(not_integer)
}

impl<'a> Command<'a> {
    pub fn from_args(args: &[&'a [u8]], role: Role) -> ParseResult<Command<'a>> {
        let mut lower = [0u8; MAX_COMMAND_NAME];
        let name = lowercase_name(args[0], &mut lower);
        let rest = &args[1..];
        let cmd = match name.as_ref() {
            "ping" => Command::Ping(ping::Ping::parse(rest)?),
            "echo" => Command::Echo(echo::Echo::parse(rest)?),
            "hello" => Command::Hello(hello::Hello::parse(rest)?),
            "command" => Command::Introspect(command::CommandCmd::parse(rest)?),
            "config" => Command::ConfigGet(config::ConfigGet::parse(rest)?),
            "client" => Command::Client(client::ClientCmd::parse(rest)?),
            "select" => Command::Select(select::Select::parse(rest)?),
            "exists" => Command::Exists(exists::Exists::parse(rest)?),
            "zrange" => Command::ZRange(zrange::ZRange::parse(rest)?),
            "zrevrange" => Command::ZRange(zrevrange::parse(rest)?),
            "zcard" => Command::ZCard(zcard::ZCard::parse(rest)?),
            "zscore" => Command::ZScore(zscore::ZScore::parse(rest)?),
            "get" => Command::Get(get::Get::parse(rest)?),
            "mget" => Command::MGet(mget::MGet::parse(rest)?),
            "hgetall" => Command::HGetAll(hgetall::HGetAll::parse(rest)?),
            "hget" => Command::HGet(hget::HGet::parse(rest)?),
            "hmget" => Command::HMGet(hmget::HMGet::parse(rest)?),
            "hkeys" => Command::HKeys(hkeys::HKeys::parse(rest, hkeys::Part::Fields)?),
            "hvals" => Command::HKeys(hkeys::HKeys::parse(rest, hkeys::Part::Values)?),
            "hlen" => Command::HLen(hlen::HLen::parse(rest)?),
            "hexists" => Command::HExists(hexists::HExists::parse(rest)?),
            "type" => Command::Type(type_cmd::Type::parse(rest)?),
            "info" => Command::Info(info::Info::parse(rest)?),
            "quit" => Command::Quit,
            "run" | "reload" | "status" | "jobs" | "pause" | "resume" | "history" | "progress" | "plugins"
            | "rollback" | "verify" | "import" | "models" | "promote" | "discard" | "drop" | "lineage"
            | "evalrecord"
                if role != Role::Admin =>
            {
                return Err(format!("NOPERM '{name}' is a control command: use the admin socket"));
            }
            "run" => Command::Run(run::Run::parse(rest)?),
            "reload" => Command::Reload,
            "status" => Command::Status(status::Status::parse(rest)?),
            "lineage" => Command::Lineage(lineage::Lineage::parse(rest)?),
            "jobs" => Command::Jobs(jobs::Jobs::parse(rest)?),
            "history" => Command::History(history::History::parse(rest)?),
            "progress" => Command::Progress(progress::Progress::parse(rest)?),
            "plugins" => Command::Plugins,
            "pause" => Command::Pause(pause::Pause::parse(rest, true)?),
            "resume" => Command::Pause(pause::Pause::parse(rest, false)?),
            "rollback" => Command::Rollback(rollback::Rollback::parse(rest)?),
            "import" => Command::Import(import::Import::parse(rest)?),
            "verify" => Command::Verify,
            "models" => Command::Models(models::Models::parse(rest)?),
            "promote" => Command::Promote(promote::Promote::parse(rest)?),
            "discard" => Command::Discard(discard::Discard::parse(rest)?),
            "drop" => Command::Drop(drop::Drop::parse(rest)?),
            "evalrecord" => Command::EvalRecord(evalrecord::EvalRecord::parse(rest)?),
            w if WRITE_COMMANDS.contains(&w) => {
                return Err("READONLY recd serves precomputed tables: writes are not accepted".to_string());
            }
            _ => return Err(unknown(&name, rest)),
        };
        Ok(cmd)
    }
}

/// Longer than any command name recd knows: a longer name is unknown whatever its case.
const MAX_COMMAND_NAME: usize = 32;

/// The command name in lower case, in `buf` (no allocation per request); a name that
/// does not fit, or is not UTF-8, comes back in a string of its own (lower case too, as
/// errors show it) and matches no command.
fn lowercase_name<'b>(name: &'b [u8], buf: &'b mut [u8; MAX_COMMAND_NAME]) -> std::borrow::Cow<'b, str> {
    if name.len() <= MAX_COMMAND_NAME {
        let lower = &mut buf[..name.len()];
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        if let Ok(s) = std::str::from_utf8(lower) {
            return std::borrow::Cow::Borrowed(s);
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(name).to_ascii_lowercase())
}

fn unknown(name: &str, rest: &[&[u8]]) -> String {
    let shown: Vec<String> = rest.iter().take(3).map(|a| format!("'{}'", String::from_utf8_lossy(a))).collect();
    format!("ERR unknown command '{name}', with args beginning with: {}", shown.join(" "))
}

/// Parses and runs one request, writing its reply to `out`. Control commands that wait (on
/// the scheduler, the store's publish lock, a sync of the store's files, a worker) finish
/// here; everything else is answered by [`execute_now`].
pub async fn execute(args: &[&[u8]], daemon: &Arc<Daemon>, client: &mut Client, out: &mut Reply) -> Flow {
    let cmd = match execute_now(args, daemon, client, out) {
        Now::Done(flow) => return flow,
        Now::Later(cmd) => cmd,
    };
    match cmd {
        Command::Run(c) => c.apply(daemon, out).await,
        Command::Reload => reload::apply(daemon, out).await,
        Command::Rollback(c) => c.apply(daemon, out).await,
        Command::Import(c) => c.apply(daemon, out).await,
        Command::Verify => verify::apply(daemon, out).await,
        Command::EvalRecord(c) => c.apply(daemon, out).await,
        Command::Models(c) => c.apply(daemon, out).await,
        Command::Promote(c) => c.apply(daemon, out).await,
        Command::Discard(c) => c.apply(daemon, out).await,
        Command::Drop(c) => c.apply(daemon, out).await,
        Command::Pause(c) => c.apply(daemon, out).await,
        _ => unreachable!("execute_now answers every command that does not wait"),
    }
    Flow::Continue
}

/// What [`execute_now`] did with a request.
pub enum Now<'a> {
    /// Answered; the connection goes on or closes after this reply (QUIT).
    Done(Flow),
    /// A control command that waits: [`execute`] runs it. Never for the read socket,
    /// whose clients cannot name one.
    Later(Command<'a>),
}

/// Answers a request that needs no waiting, on the calling thread.
pub fn execute_now<'a>(args: &[&'a [u8]], daemon: &Arc<Daemon>, client: &mut Client, out: &mut Reply) -> Now<'a> {
    daemon.metrics.request(client.role == crate::server::Role::Admin);
    let cmd = match Command::from_args(args, client.role) {
        Ok(cmd) => cmd,
        Err(reply) => {
            resp::error(out, &reply);
            return Now::Done(Flow::Continue);
        }
    };
    match cmd {
        Command::Ping(c) => c.apply(out),
        Command::Echo(c) => c.apply(out),
        Command::Hello(c) => c.apply(client, out),
        Command::Introspect(c) => c.apply(out),
        Command::ConfigGet(c) => c.apply(daemon, out),
        Command::Client(c) => c.apply(client, out),
        Command::Select(c) => c.apply(out),
        Command::Exists(c) => c.apply(daemon, out),
        Command::ZRange(c) => c.apply(daemon, out),
        Command::ZCard(c) => c.apply(daemon, out),
        Command::ZScore(c) => c.apply(daemon, out),
        Command::Get(c) => c.apply(daemon, out),
        Command::MGet(c) => c.apply(daemon, out),
        Command::HGetAll(c) => c.apply(daemon, out),
        Command::HGet(c) => c.apply(daemon, out),
        Command::HMGet(c) => c.apply(daemon, out),
        Command::HKeys(c) => c.apply(daemon, out),
        Command::HLen(c) => c.apply(daemon, out),
        Command::HExists(c) => c.apply(daemon, out),
        Command::Type(c) => c.apply(daemon, out),
        Command::Info(c) => c.apply(daemon, out),
        Command::Quit => {
            resp::simple(out, "OK");
            return Now::Done(Flow::Close);
        }
        Command::Status(c) => c.apply(daemon, out),
        Command::Lineage(c) => c.apply(daemon, out),
        Command::Jobs(c) => c.apply(daemon, out),
        Command::History(c) => c.apply(daemon, out),
        Command::Progress(c) => c.apply(daemon, out),
        Command::Plugins => plugins::apply(daemon, out),
        // Listed, not matched by a wildcard: a new command must be placed on one side.
        waits @ (Command::Run(_)
        | Command::Reload
        | Command::Rollback(_)
        | Command::Import(_)
        | Command::Verify
        | Command::EvalRecord(_)
        | Command::Models(_)
        | Command::Promote(_)
        | Command::Discard(_)
        | Command::Drop(_)
        | Command::Pause(_)) => return Now::Later(waits),
    }
    Now::Done(Flow::Continue)
}

/// The table versions one request reads. Each table is resolved once per request, so a
/// multi-key command (MGET, EXISTS) never mixes two versions of a table even when a
/// publish lands while it runs.
pub struct Snapshot<'d> {
    daemon: &'d Daemon,
    /// Inline: a request names a table or two, and reads must not allocate.
    tables: SmallVec<[(TableName, Option<Arc<ServedTable>>); 2]>,
    /// The tables after the first [`SCANNED_TABLES`], by name: a request of 60,000 keys,
    /// each naming another table, looked each up in a list took 6 s of the serving thread.
    more_tables: HashMap<TableName, Option<Arc<ServedTable>>>,
}

/// How many tables a snapshot keeps in its inline list before it keeps them by name.
const SCANNED_TABLES: usize = 8;

type TableName = SmallVec<[u8; 24]>;

/// Which table answered a read (no names: the read path does not allocate).
enum Answered {
    /// The key's own table (an experiment's: its variant's).
    Own,
    /// The table's `fallback[index]`, with the user's own list there, or its
    /// `__default__` (`default`).
    Fallback { index: usize, default: bool },
}

impl<'d> Snapshot<'d> {
    pub fn new(daemon: &'d Daemon) -> Self {
        Snapshot { daemon, tables: SmallVec::new(), more_tables: HashMap::new() }
    }

    /// The stored value for `key` (`<table>:<user>`), if any. A user the table lacks is
    /// answered by its fallback tables, in order: `<fallback>:<user>`, then
    /// `<fallback>:__default__`.
    pub fn get(&mut self, key: &[u8]) -> Option<Stored> {
        self.get_answered(key).map(|(stored, ..)| stored)
    }

    /// Like [`Snapshot::get`], with the key that answered: `<table>:<user>` itself, or a
    /// fallback's `<fallback>:<user>` or `<fallback>:__default__` (`GET key WITHSOURCE`),
    /// and whether it was a fallback.
    pub fn get_sourced(&mut self, key: &[u8]) -> Option<(Stored, String, bool)> {
        let (stored, answered, served) = self.get_answered(key)?;
        let (table, user) = key.split_at(key.iter().position(|&b| b == b':')?);
        let user = &user[1..];
        let text = String::from_utf8_lossy;
        Some(match answered {
            // The key's table, or an experiment's variant table.
            Answered::Own => {
                let own = match self.daemon.store.served(&text(table)) {
                    Some(_) => text(table).into_owned(),
                    None => std::str::from_utf8(table)
                        .ok()
                        .and_then(|n| self.daemon.experiment(n))
                        .map_or_else(|| text(table).into_owned(), |live| live.variant(user).table.clone()),
                };
                (stored, format!("{own}:{}", text(user)), false)
            }
            Answered::Fallback { index, default } => {
                let user = if default { DEFAULT_USER } else { user };
                (stored, format!("{}:{}", served.fallback[index], text(user)), true)
            }
        })
    }

    /// The value for `key`, which table answered, and the table the key resolved to.
    fn get_answered(&mut self, key: &[u8]) -> Option<(Stored, Answered, Arc<ServedTable>)> {
        let colon = key.iter().position(|&b| b == b':')?;
        let (table, user) = (&key[..colon], &key[colon + 1..]);
        let Some(served) = self.table(table) else {
            // Not a table: an experiment answers with the user's variant's value.
            let live = std::str::from_utf8(table).ok().and_then(|name| self.daemon.experiment(name))?;
            let variant = live.variant(user).table.clone();
            let served = self.table(variant.as_bytes())?;
            return self.answer(served, variant.as_bytes(), user);
        };
        self.answer(served, table, user)
    }

    fn answer(
        &mut self,
        served: Arc<ServedTable>,
        table: &[u8],
        user: &[u8],
    ) -> Option<(Stored, Answered, Arc<ServedTable>)> {
        if let Some(value) = read(&served, table, user) {
            return Some((Stored::new(served.kind, value), Answered::Own, served));
        }
        for (index, fb) in served.fallback.iter().enumerate() {
            let Some(fb_table) = self.table(fb.as_bytes()) else { continue };
            // A table that is its own fallback has just been asked for the user.
            let own_user = (fb.as_bytes() != table).then(|| read(&fb_table, fb.as_bytes(), user)).flatten();
            let (found, default) = match own_user {
                Some(value) => (Some(value), false),
                None => (read(&fb_table, fb.as_bytes(), DEFAULT_USER), true),
            };
            if let Some(value) = found {
                return Some((Stored::new(fb_table.kind, value), Answered::Fallback { index, default }, served));
            }
        }
        None
    }

    /// The version of `table` this snapshot reads (None: no such table).
    pub fn version(&mut self, table: &str) -> Option<u64> {
        self.table(table.as_bytes()).map(|t| t.version)
    }

    fn table(&mut self, name: &[u8]) -> Option<Arc<ServedTable>> {
        if let Some((_, served)) = self.tables.iter().find(|(t, _)| t.as_slice() == name) {
            return served.clone();
        }
        if let Some(served) = self.more_tables.get(name) {
            return served.clone();
        }
        let served = std::str::from_utf8(name).ok().and_then(|t| self.daemon.store.served(t));
        if self.tables.len() < SCANNED_TABLES {
            self.tables.push((TableName::from_slice(name), served.clone()));
        } else {
            self.more_tables.insert(TableName::from_slice(name), served.clone());
        }
        served
    }
}

fn read(served: &ServedTable, table: &[u8], user: &[u8]) -> Option<sled::IVec> {
    match served.get(user) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(table = %String::from_utf8_lossy(table), "store read failed: {e}");
            None
        }
    }
}

/// One key's value, as stored.
pub enum Stored {
    List(sled::IVec),
    Hash(sled::IVec),
}

impl Stored {
    fn new(kind: TableKind, bytes: sled::IVec) -> Stored {
        match kind {
            TableKind::Lists => Stored::List(bytes),
            TableKind::Hashes => Stored::Hash(bytes),
        }
    }
}

/// The experiment and user of `key` when its table part names an experiment and no table.
fn experiment_key<'k>(daemon: &Daemon, key: &'k [u8]) -> Option<(Arc<crate::experiment::Live>, &'k [u8])> {
    let colon = key.iter().position(|&b| b == b':')?;
    let name = std::str::from_utf8(&key[..colon]).ok()?;
    if daemon.store.served(name).is_some() {
        return None;
    }
    Some((daemon.experiment(name)?, &key[colon + 1..]))
}

/// Redis's answer to a command on a value of another type.
pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// The stored value for `key` in the version current now.
pub fn lookup(daemon: &Daemon, key: &[u8]) -> Option<Stored> {
    Snapshot::new(daemon).get(key)
}

/// Runs `f` on the stored list for `key` (an empty one when absent), read in place with
/// [`ListEntries`](crate::store::ListEntries); a hash gets WRONGTYPE.
pub fn with_list_value(daemon: &Daemon, key: &[u8], out: &mut Reply, f: impl FnOnce(&sled::IVec, &mut Reply)) {
    match lookup(daemon, key) {
        Some(Stored::List(bytes)) => f(&bytes, out),
        Some(Stored::Hash(_)) => resp::error(out, WRONGTYPE),
        None => f(&sled::IVec::from(&0u32.to_le_bytes()[..]), out),
    }
}

/// Runs `f` on the decoded hash for `key`, fields in stored order (empty when absent); a
/// list gets WRONGTYPE. The key of an experiment (`<experiment>:<user>`, no table of that
/// name) reads as the hash of the user's assignment: `variant` and `table`.
pub fn with_hash(daemon: &Daemon, key: &[u8], out: &mut Reply, f: impl FnOnce(&[(&[u8], &[u8])], &mut Reply)) {
    // Before the lookup, which would follow the experiment to its variant's value (a hash,
    // when the variants are tables of hashes).
    if let Some((live, user)) = experiment_key(daemon, key) {
        let variant = live.variant(user);
        return f(&[(b"variant", variant.name.as_bytes()), (b"table", variant.table.as_bytes())], out);
    }
    match lookup(daemon, key) {
        Some(Stored::Hash(bytes)) => f(&decode_hash(&bytes), out),
        Some(Stored::List(_)) => resp::error(out, WRONGTYPE),
        None => f(&[], out),
    }
}
