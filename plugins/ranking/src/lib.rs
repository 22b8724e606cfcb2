//! ranking: for each user known to the model, score candidate items with the job's
//! ONNX model (through the host) and keep the top k.
//!
//! Inputs: `interactions` (user, item, optional `cancelled` flag), `users` and `items`
//! (the model's id vocabularies: `user_id,index` and `item_id,index`).
//! Candidates: every item the user has not bought (`candidates = "unseen"`), or the
//! `popular_pool` items with the most distinct buyers minus those bought
//! (`candidates = "popular"`). An item counts as bought if the user has any
//! non-cancelled line for it: recommending something they returned is no better.
//!
//! Model inputs are bound in the job's `[model_inputs]` to these features: `user` and
//! `item` (the model's int64 indices of the pair), `users.<column>` (a numeric column of
//! input `users`, for the pair's user) and `items.<column>` (of input `items`, for the
//! pair's item). Unbound, the model's inputs must be named after features (the shipped
//! model's are `user` and `item`). The score is read from output `score_output`.
//!
//! Memory: `interactions` and `users` are streamed (ABI 1.2). Interactions grouped by user
//! (an export sorted by user) are read one user at a time; in any other order every
//! user's purchases are held at once, 4 bytes a purchase and 4 a user. See
//! [`Ranking::read_purchases`].

use arrow_array::{ArrayRef, Float32Array, Int64Array, RecordBatch};
use arrow_buffer::ScalarBuffer;
use recd_plugin_api::columns::{booleans, column, numbers};
use recd_plugin_api::ids::{IdIndex, IdIndexBuilder};
use recd_plugin_api::model::{FeatureValues, ModelInput, model_column, scoring_batch};
use recd_plugin_api::{
    CheckContext, InputStream, LogLevel, OutputRows, PluginError, RunContext, Strategy, export_plugin,
};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Candidates {
    Unseen,
    Popular,
    /// Each user's items in input `pool` (e.g. `table:<upstream>`: columns user, item).
    Upstream,
}

/// The job's `[params]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Items kept per user.
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default = "default_candidates")]
    candidates: Candidates,
    /// Size of the popular pool when `candidates = "popular"`.
    #[serde(default = "default_pool")]
    popular_pool: usize,
    /// (user, item) pairs scored per host call; unset: chosen by [`auto_batch_pairs`].
    batch_pairs: Option<usize>,
    /// Build the next batch while the current one is scored; default: on machines with
    /// more than two cores.
    #[serde(default = "default_overlap")]
    overlap: bool,
    #[serde(default = "default_user_column")]
    user_column: String,
    #[serde(default = "default_item_column")]
    item_column: String,
    /// Boolean column marking cancelled lines; ignored if the table lacks it.
    #[serde(default = "default_cancelled_column")]
    cancelled_column: String,
    /// Business filter: a boolean column of input `items`; items where it is false are
    /// never recommended.
    available_column: Option<String>,
    /// The model output holding the score.
    #[serde(default = "default_score_output")]
    score_output: String,
}

fn default_score_output() -> String {
    "score".into()
}

fn default_k() -> usize {
    10
}
fn default_candidates() -> Candidates {
    Candidates::Unseen
}
fn default_pool() -> usize {
    500
}
/// On two cores the batch builder competes with ONNX Runtime's two threads and the
/// daemon taking the rows: measured on the retail demo and the M workload, overlapping
/// was no faster there (0.9 s against 0.8 s on retail, 3.2-3.5 s either way on M).
fn default_overlap() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() > 2)
}

/// The batch size when the job sets none: an eighth of the run's pairs, so that building
/// batches overlaps scoring for most of the run, between 4,096 pairs (below that the cost
/// of a model call starts to show) and 65,536 (so a batch's tensors stay bounded: a few
/// tens of MB for a factor model, about 130 MB for an MLP with two hidden layers of 256).
fn auto_batch_pairs(total_pairs: usize) -> usize {
    total_pairs.div_ceil(8).clamp(4096, 65_536)
}
fn default_user_column() -> String {
    "user_id".into()
}
fn default_item_column() -> String {
    "item_id".into()
}
fn default_cancelled_column() -> String {
    "cancelled".into()
}

struct Ranking {
    params: Params,
}

impl Strategy for Ranking {
    fn new(params_json: &str) -> Result<Self, PluginError> {
        let params: Params = recd_plugin_api::params::parse(params_json)?;
        if params.k == 0 || params.k > 10_000 {
            return Err(PluginError::params(format!("params.k: must be 1..=10000, got {}", params.k)));
        }
        if params.batch_pairs == Some(0) {
            return Err(PluginError::params("params.batch_pairs: must be positive"));
        }
        if params.candidates == Candidates::Popular && params.popular_pool < params.k {
            return Err(PluginError::params(format!(
                "params.popular_pool: must be at least k ({}), got {}",
                params.k, params.popular_pool
            )));
        }
        Ok(Ranking { params })
    }

    fn check(&self, ctx: &CheckContext) -> Result<(), PluginError> {
        let p = &self.params;
        ctx.require("interactions", &p.user_column, "params.user_column")?;
        ctx.require("interactions", &p.item_column, "params.item_column")?;
        for (table, id) in [("users", "user_id"), ("items", "item_id")] {
            ctx.require(table, id, &format!("inputs.{table}"))?;
            ctx.require(table, "index", &format!("inputs.{table}"))?;
        }
        if let Some(col) = &p.available_column {
            ctx.require("items", col, "params.available_column")?;
        }
        if p.candidates == Candidates::Upstream {
            ctx.require("pool", "user", "params.candidates")?;
            ctx.require("pool", "item", "params.candidates")?;
        }
        let Some(bound) = ctx.model_inputs()? else {
            return Err(PluginError::params("model: ranking scores with a model; the job needs `model`"));
        };
        for input in &bound {
            if let Feature::Column(table, col) = parse_feature(input)? {
                ctx.require(table, col, &format!("model_inputs.{}", input.input))?;
            }
        }
        Ok(())
    }

    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
        let vocab = Vocab::read(ctx)?;
        let features = bind_features(ctx, &vocab)?;
        let (purchases, buyers) = self.read_purchases(ctx, &vocab)?;
        // An unavailable item is treated like one already bought: never a candidate.
        let unavailable = self.unavailable(ctx, &vocab)?;
        let pool = match self.params.candidates {
            Candidates::Unseen => Pool::All((0..vocab.items.len()).collect()),
            Candidates::Popular => Pool::All(popular_pool(&buyers, self.params.popular_pool, &unavailable)),
            Candidates::Upstream => Pool::PerUser(upstream_pool(ctx, &vocab)?),
        };
        drop(buyers);
        let pool = pool.without(&unavailable);
        ctx.log(
            LogLevel::Info,
            &format!(
                "ranking {} users, {} items unavailable, k={}",
                vocab.users.len(),
                unavailable.len(),
                self.params.k
            ),
        );
        let scorer = Scorer { features, output: self.params.score_output.clone() };
        self.score_all(ctx, &vocab, &purchases, &pool, &scorer)
    }
}

/// The model's id vocabularies: position in `users`/`items` is the model index.
struct Vocab {
    users: IdIndex,
    items: IdIndex,
}

impl Vocab {
    fn read(ctx: &RunContext<'_>) -> Result<Self, PluginError> {
        Ok(Vocab { users: read_vocab(ctx, "users", "user_id")?, items: read_vocab(ctx, "items", "item_id")? })
    }
}

/// A vocabulary input (`<id>,index`) read as a stream: `users` is one of the plugin's
/// `stream_inputs`, so a million-user file is never in memory whole, only its index.
fn read_vocab(ctx: &RunContext<'_>, table: &str, id_column: &str) -> Result<IdIndex, PluginError> {
    let mut builder = IdIndexBuilder::new(table);
    for batch in ctx.input_stream(table, &[id_column, "index"])? {
        let batch = batch?;
        builder.add(batch.column(0), batch.column(1))?;
    }
    builder.finish()
}

/// Where each user's purchases come from while the run scores them.
enum Purchases {
    /// The interactions are grouped by user (each user's lines next to each other, as
    /// an export sorted by user gives them): read again while scoring, one user at a
    /// time, so memory does not grow with the users.
    Grouped(PurchaseColumns),
    /// Any other order: every user's purchases, held at once.
    Held(Held),
}

/// Per model user index, the model item indices bought: sorted, each once, in one flat
/// list (4 bytes per purchase and 4 per user; a `Vec` per user cost 40 bytes more each).
struct Held {
    /// User `u`'s items are `items[starts[u]..starts[u + 1]]`.
    starts: Vec<u32>,
    items: Vec<u32>,
}

impl Held {
    fn users(&self) -> usize {
        self.starts.len() - 1
    }

    fn of(&self, user: usize) -> &[u32] {
        &self.items[self.starts[user] as usize..self.starts[user + 1] as usize]
    }
}

/// An interaction line as (user, item) model indices, `None` where not one.
type Line = (Option<u32>, Option<u32>);

/// The interactions' columns a purchase is read from.
struct PurchaseColumns {
    names: Vec<String>,
    user_what: String,
    item_what: String,
    cancelled_what: Option<String>,
}

impl PurchaseColumns {
    fn new(ctx: &RunContext<'_>, p: &Params) -> Result<Self, PluginError> {
        let t = "interactions";
        let has_cancelled = ctx.input(t)?.schema_ref().index_of(&p.cancelled_column).is_ok();
        let mut names = vec![p.user_column.clone(), p.item_column.clone()];
        if has_cancelled {
            names.push(p.cancelled_column.clone());
        }
        Ok(PurchaseColumns {
            names,
            user_what: format!("{t}.{}", p.user_column),
            item_what: format!("{t}.{}", p.item_column),
            cancelled_what: has_cancelled.then(|| format!("{t}.{}", p.cancelled_column)),
        })
    }

    fn open(&self, ctx: &RunContext<'_>) -> Result<InputStream, PluginError> {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        ctx.input_stream("interactions", &names)
    }

    /// One batch's lines as (user, item) model indices: `None` for ids the model does not
    /// know, and the item `None` too for a cancelled line.
    fn lines(&self, batch: &RecordBatch, vocab: &Vocab) -> Result<Vec<Line>, PluginError> {
        let users = vocab.users.positions(batch.column(0), &self.user_what)?;
        let mut items = vocab.items.positions(batch.column(1), &self.item_what)?;
        if let Some(what) = &self.cancelled_what {
            for (item, cancelled) in items.iter_mut().zip(booleans(batch.column(2).as_ref(), what)?) {
                if cancelled == Some(true) {
                    *item = None;
                }
            }
        }
        Ok(users.into_iter().zip(items).collect())
    }
}

/// How a walk over the users' purchases ended.
enum Walk {
    /// Every user with lines was handed over; the set says which.
    Done(Bits),
    /// The callback said stop.
    Stopped,
    /// A user's lines are not all together: `user` shows up again at `row` (from 0).
    NotGrouped { row: u64, user: u32 },
}

/// A set of model user indices, a bit each.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn has(&self, i: u32) -> bool {
        self.0[i as usize / 64] >> (i % 64) & 1 == 1
    }
    fn insert(&mut self, i: u32) {
        self.0[i as usize / 64] |= 1 << (i % 64);
    }
}

/// Hands each user of grouped interactions to `f` with their purchases (sorted, each
/// once) as soon as their last line is read, in the file's order; lines of users the
/// model does not know are skipped wherever they are. Stops at the first user whose
/// lines are not together.
fn walk_groups(
    stream: InputStream,
    columns: &PurchaseColumns,
    vocab: &Vocab,
    mut f: impl FnMut(u32, &[u32]) -> Result<bool, PluginError>,
) -> Result<Walk, PluginError> {
    let mut done = Bits::new(vocab.users.len());
    let mut current: Option<u32> = None;
    let mut bought: Vec<u32> = Vec::new();
    let mut row = 0u64;
    let mut finish = |user: u32, bought: &mut Vec<u32>, done: &mut Bits| {
        bought.sort_unstable();
        bought.dedup();
        done.insert(user);
        let go_on = f(user, bought);
        bought.clear();
        go_on
    };
    for batch in stream {
        for (user, item) in columns.lines(&batch?, vocab)? {
            let at = row;
            row += 1;
            let Some(user) = user else { continue };
            if current != Some(user) {
                if done.has(user) {
                    return Ok(Walk::NotGrouped { row: at, user });
                }
                if let Some(last) = current.replace(user)
                    && !finish(last, &mut bought, &mut done)?
                {
                    return Ok(Walk::Stopped);
                }
            }
            bought.extend(item);
        }
    }
    if let Some(last) = current
        && !finish(last, &mut bought, &mut done)?
    {
        return Ok(Walk::Stopped);
    }
    Ok(Walk::Done(done))
}

impl Ranking {
    /// Model indices of the items `available_column` (in input `items`) marks false.
    fn unavailable(&self, ctx: &RunContext<'_>, vocab: &Vocab) -> Result<HashSet<u32>, PluginError> {
        let Some(col) = &self.params.available_column else { return Ok(HashSet::new()) };
        let batch = ctx.input("items")?;
        let flags = booleans(
            column(batch, "items", col).map_err(|e| PluginError::params(format!("params.available_column: {e}")))?,
            &format!("items.{col}"),
        )?;
        let items = vocab.items.positions(column(batch, "items", "item_id")?, "items.item_id")?;
        Ok(items.into_iter().zip(flags).filter(|(_, ok)| *ok == Some(false)).filter_map(|(i, _)| i).collect())
    }

    /// What each user bought, and each item's number of distinct buyers. The
    /// interactions are a stream (the plugin declares them in `stream_inputs`), never in
    /// memory whole. The first pass counts the buyers and finds out whether each user's
    /// lines are together; if they are, scoring reads them again one user at a time and
    /// nothing per user is kept. If not (the first pass then stops at the first user seen
    /// again) every user's purchases are held ([`Ranking::hold_purchases`]).
    fn read_purchases(&self, ctx: &RunContext<'_>, vocab: &Vocab) -> Result<(Purchases, Vec<u32>), PluginError> {
        let columns = PurchaseColumns::new(ctx, &self.params)?;
        let mut buyers = vec![0u32; vocab.items.len()];
        let count = |_: u32, bought: &[u32]| {
            bought.iter().for_each(|&i| buyers[i as usize] += 1);
            Ok(true)
        };
        match walk_groups(columns.open(ctx)?, &columns, vocab, count)? {
            Walk::Done(_) | Walk::Stopped => {
                ctx.log(LogLevel::Info, "interactions are grouped by user: purchases are read one user at a time");
                Ok((Purchases::Grouped(columns), buyers))
            }
            Walk::NotGrouped { row, user } => {
                let id = vocab.users.id(user);
                ctx.log(
                    LogLevel::Info,
                    &format!(
                        "interactions are not grouped by user (user {id:?} again at row {row}): \
                         every user's purchases are held"
                    ),
                );
                let held = self.hold_purchases(ctx, &columns, vocab)?;
                // The first pass stopped part way: count again, from what is held.
                buyers.fill(0);
                held.items.iter().for_each(|&i| buyers[i as usize] += 1);
                Ok((Purchases::Held(held), buyers))
            }
        }
    }

    /// Every user's purchases at once, for interactions in any order. Two passes: lines
    /// per user, to size one flat list, then the items, each user's sorted and
    /// deduplicated in place.
    fn hold_purchases(
        &self,
        ctx: &RunContext<'_>,
        columns: &PurchaseColumns,
        vocab: &Vocab,
    ) -> Result<Held, PluginError> {
        let t = "interactions";
        let n = vocab.users.len();
        // Pass 1: lines per known user, an upper bound (pass 2 drops cancelled lines and
        // unknown items). `starts[u + 1]` counts user u, then the prefix sum makes starts.
        let mut starts = vec![0u32; n + 1];
        for batch in ctx.input_stream(t, &[&self.params.user_column])? {
            for u in vocab.users.positions(batch?.column(0), &columns.user_what)?.into_iter().flatten() {
                starts[u as usize + 1] += 1;
            }
        }
        let mut total: u32 = 0;
        for s in &mut starts[1..] {
            total = total
                .checked_add(*s)
                .ok_or_else(|| PluginError::input(format!("{t}: more than {} lines", u32::MAX)))?;
            *s = total;
        }
        // Pass 2: the items, each user's at their own cursor.
        let mut items = vec![0u32; total as usize];
        let mut cursor = starts[..n].to_vec();
        for batch in columns.open(ctx)? {
            for (user, item) in columns.lines(&batch?, vocab)? {
                let (Some(u), Some(i)) = (user, item) else { continue };
                let u = u as usize;
                if cursor[u] == starts[u + 1] {
                    return Err(PluginError::input(format!("{t}: the input changed while it was read")));
                }
                items[cursor[u] as usize] = i;
                cursor[u] += 1;
            }
        }
        // Sort and deduplicate each user's items, moving them down over the gaps.
        let mut kept = 0usize;
        for u in 0..n {
            let (from, to) = (starts[u] as usize, cursor[u] as usize);
            items[from..to].sort_unstable();
            starts[u] = kept as u32;
            for at in from..to {
                if at == from || items[at] != items[at - 1] {
                    items[kept] = items[at];
                    kept += 1;
                }
            }
        }
        starts[n] = kept as u32;
        items.truncate(kept);
        items.shrink_to_fit();
        Ok(Held { starts, items })
    }

    /// Scores every user's candidates batch by batch. With `overlap` the batches are
    /// built on a thread of their own while this one scores, ranks and emits the batch
    /// before, so preparing batch n + 1 overlaps scoring batch n; the channel holds one
    /// batch, so at most three are alive at once whatever the number of users. Without
    /// it each batch is built, then scored: ONNX Runtime then has the cores to itself.
    fn score_all(
        &self,
        ctx: &mut RunContext<'_>,
        vocab: &Vocab,
        purchases: &Purchases,
        pool: &Pool,
        scorer: &Scorer,
    ) -> Result<(), PluginError> {
        let total = vocab.users.len() as u64;
        let batch_pairs = self.params.batch_pairs.unwrap_or_else(|| auto_batch_pairs(pool.pairs(vocab.users.len())));
        let walker = match purchases {
            Purchases::Held(held) => Walker::Held(held),
            Purchases::Grouped(columns) => Walker::Grouped(columns.open(ctx)?, columns),
        };
        let others = other_shards(ctx, vocab);
        let others = others.as_deref();
        let mut result = Ok(());
        let mut take = |batch: PairBatch, users_done: usize, ctx: &mut RunContext<'_>| {
            let step =
                if ctx.is_cancelled() { Err(PluginError::cancelled()) } else { self.flush(ctx, vocab, batch, scorer) };
            ctx.progress(users_done as u64, total);
            step.map_err(|e| result = Err(e)).is_ok()
        };
        if !self.params.overlap {
            let built = build_batches(walker, vocab, pool, others, batch_pairs, |batch, done| take(batch, done, ctx));
            return result.and(built);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<(PairBatch, usize)>(1);
        let built = std::thread::scope(|scope| {
            let producer = scope.spawn(move || {
                build_batches(walker, vocab, pool, others, batch_pairs, |b, done| tx.send((b, done)).is_ok())
            });
            for (batch, users_done) in rx.iter() {
                if !take(batch, users_done, ctx) {
                    break;
                }
            }
            // Hang up first: a producer blocked on a full channel then stops.
            drop(rx);
            producer.join()
        });
        let built = built.map_err(|_| PluginError::internal("the batch builder panicked"))?;
        result.and(built)
    }

    /// Scores the pending pairs, keeps each user's top k and emits them.
    fn flush(
        &self,
        ctx: &mut RunContext<'_>,
        vocab: &Vocab,
        batch: PairBatch,
        scorer: &Scorer,
    ) -> Result<(), PluginError> {
        if batch.items.is_empty() {
            return Ok(());
        }
        let (scores, items) = scorer.score(ctx, batch.users, batch.items)?;
        let mut out = OutputRows::new();
        let mut best = Vec::with_capacity(self.params.k + 1);
        for &(u, start, n) in &batch.spans {
            top_k(&scores[start..start + n], &items[start..start + n], self.params.k, &mut best);
            for &(score, item) in &best {
                out.push(vocab.users.id(u as u32), vocab.items.id(item as u32), score);
            }
        }
        ctx.emit(out.into_batch()?)
    }
}

/// Whether `a` ranks before `b`: higher score first, then lower item index.
fn ranks_before(a: (f32, i64), b: (f32, i64)) -> bool {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)) == std::cmp::Ordering::Less
}

/// The `k` best of one user's (score, item) candidates into `best`, best first. One pass
/// that keeps the k best so far in order: with k small next to the candidates (10 of
/// hundreds or thousands) almost every candidate is one compare against the k-th.
fn top_k(scores: &[f32], items: &[i64], k: usize, best: &mut Vec<(f32, i64)>) {
    best.clear();
    for (&score, &item) in scores.iter().zip(items) {
        let c = (score, item);
        if best.len() == k {
            if !best.last().is_some_and(|&worst| ranks_before(c, worst)) {
                continue;
            }
            best.pop();
        }
        let at = best.partition_point(|&b| ranks_before(b, c));
        best.insert(at, c);
    }
}

/// Each user's purchases, in the order the batch builder gets them.
enum Walker<'a> {
    Held(&'a Held),
    /// The grouped interactions, read again.
    Grouped(InputStream, &'a PurchaseColumns),
}

impl Walker<'_> {
    /// Hands every user of the vocabulary to `f` once, with their purchases, until `f`
    /// says stop. Held: in index order. Grouped: in the file's order, then the users
    /// without a line (in index order).
    fn walk(
        self,
        vocab: &Vocab,
        mut f: impl FnMut(u32, &[u32]) -> Result<bool, PluginError>,
    ) -> Result<(), PluginError> {
        match self {
            Walker::Held(held) => {
                for u in 0..held.users() {
                    if !f(u as u32, held.of(u))? {
                        break;
                    }
                }
                Ok(())
            }
            Walker::Grouped(stream, columns) => match walk_groups(stream, columns, vocab, &mut f)? {
                Walk::Stopped => Ok(()),
                Walk::NotGrouped { .. } => Err(PluginError::input("interactions: the input changed while it was read")),
                Walk::Done(seen) => {
                    for u in (0..vocab.users.len() as u32).filter(|&u| !seen.has(u)) {
                        if !f(u, &[])? {
                            break;
                        }
                    }
                    Ok(())
                }
            },
        }
    }
}

/// Hands each batch of at least `batch_pairs` pairs (the last may be smaller) to `take`
/// with the number of users done so far; stops early when `take` says no. A user's
/// candidates are the pool minus what they bought, found with a stamp per item (the
/// user who last marked it) instead of a set lookup per pair.
/// Per model user index, whether the user belongs to another shard of a sharded run (the
/// host drops their rows, so they are not scored); None when this run computes everyone.
fn other_shards(ctx: &RunContext<'_>, vocab: &Vocab) -> Option<Vec<bool>> {
    let others: Vec<bool> = (0..vocab.users.len()).map(|u| !ctx.in_shard(vocab.users.id(u as u32))).collect();
    let skipped = others.iter().filter(|&&o| o).count();
    if skipped == 0 {
        return None;
    }
    ctx.log(LogLevel::Info, &format!("a shard of the run: {skipped} of {} users are other shards'", others.len()));
    Some(others)
}

fn build_batches(
    walker: Walker<'_>,
    vocab: &Vocab,
    pool: &Pool,
    others: Option<&[bool]>,
    batch_pairs: usize,
    mut take: impl FnMut(PairBatch, usize) -> bool,
) -> Result<(), PluginError> {
    let mut stamp = vec![u32::MAX; vocab.items.len()];
    let mut batch = PairBatch::default();
    let (mut users_done, mut stopped) = (0usize, false);
    walker.walk(vocab, |u, bought| {
        if others.is_some_and(|o| o[u as usize]) {
            users_done += 1;
            return Ok(true);
        }
        for &i in bought {
            stamp[i as usize] = u;
        }
        let candidates: &[usize] = match pool {
            Pool::All(items) => items,
            Pool::PerUser(lists) => lists.get(&(u as usize)).map(Vec::as_slice).unwrap_or(&[]),
        };
        let start = batch.items.len();
        batch.items.extend(candidates.iter().filter(|&&i| stamp[i] != u).map(|&i| i as i64));
        let n = batch.items.len() - start;
        if n > 0 {
            batch.users.extend(std::iter::repeat_n(i64::from(u), n));
            batch.spans.push((u as usize, start, n));
        }
        users_done += 1;
        stopped = batch.items.len() >= batch_pairs && !take(std::mem::take(&mut batch), users_done);
        Ok(!stopped)
    })?;
    if !stopped {
        // The last, possibly empty, batch carries the final progress.
        take(batch, users_done);
    }
    Ok(())
}

#[derive(Default)]
struct PairBatch {
    users: Vec<i64>,
    items: Vec<i64>,
    /// (user index, first pair, number of pairs)
    spans: Vec<(usize, usize, usize)>,
}

/// Where a model input's values come from, per (user, item) pair.
enum Source {
    UserIndex,
    ItemIndex,
    /// A value per model user index (from input `users`).
    PerUser(Vec<f64>),
    /// A value per model item index (from input `items`).
    PerItem(Vec<f64>),
}

/// The model inputs with their sources, and the output to read.
struct Scorer {
    features: Vec<(ModelInput, Source)>,
    output: String,
}

/// A feature ranking offers, as a job's `[model_inputs]` names it.
enum Feature<'f> {
    UserIndex,
    ItemIndex,
    /// (input table, column): `users.<column>` or `items.<column>`.
    Column(&'static str, &'f str),
}

fn parse_feature<'f>(input: &'f ModelInput) -> Result<Feature<'f>, PluginError> {
    match input.feature.as_str() {
        "user" => Ok(Feature::UserIndex),
        "item" => Ok(Feature::ItemIndex),
        f => match f.split_once('.') {
            Some(("users", col)) => Ok(Feature::Column("users", col)),
            Some(("items", col)) => Ok(Feature::Column("items", col)),
            _ => Err(PluginError::params(format!(
                "model_inputs.{}: unknown feature `{f}` (this strategy offers: user, item, users.<column>, items.<column>)",
                input.input
            ))),
        },
    }
}

/// Resolves each bound feature of the job's `[model_inputs]`.
fn bind_features(ctx: &RunContext<'_>, vocab: &Vocab) -> Result<Vec<(ModelInput, Source)>, PluginError> {
    let mut out = Vec::new();
    for input in ctx.model_inputs()? {
        let source = match parse_feature(&input)? {
            Feature::UserIndex => Source::UserIndex,
            Feature::ItemIndex => Source::ItemIndex,
            Feature::Column("users", col) => {
                Source::PerUser(per_id(ctx, &input, "users", "user_id", col, &vocab.users)?)
            }
            Feature::Column(_, col) => Source::PerItem(per_id(ctx, &input, "items", "item_id", col, &vocab.items)?),
        };
        out.push((input, source));
    }
    Ok(out)
}

/// A numeric column of input `table` as a value per model index; every id of the
/// vocabulary needs a value. Read as a stream of the two columns (`users` is streamed).
fn per_id(
    ctx: &RunContext<'_>,
    input: &ModelInput,
    table: &str,
    id_column: &str,
    col: &str,
    index: &IdIndex,
) -> Result<Vec<f64>, PluginError> {
    let key = format!("model_inputs.{}", input.input);
    // The column's absence is a job error (the check names it the same way).
    column(ctx.input(table)?, table, col).map_err(|e| PluginError::params(format!("{key}: {e}")))?;
    let mut out = vec![f64::NAN; index.len()];
    for batch in ctx.input_stream(table, &[id_column, col])? {
        let batch = batch?;
        let values = numbers(batch.column(1), &format!("{table}.{col}"))?;
        let positions = index.positions(batch.column(0), &format!("{table}.{id_column}"))?;
        for (i, v) in positions.into_iter().zip(values) {
            if let (Some(i), Some(v)) = (i, v) {
                out[i as usize] = v;
            }
        }
    }
    if let Some(i) = out.iter().position(|v| v.is_nan()) {
        let id = index.id(i as u32);
        return Err(PluginError::input(format!("{key}: {table}.{col} has no value for {id_column} {id:?}")));
    }
    Ok(out)
}

impl Scorer {
    /// Scores (user, item) pairs of model indices; gives back the scores and the items.
    /// The index vectors become the model's int64 columns as they are (Arrow takes the
    /// vectors over, no copy), and the items are read back from that same buffer.
    fn score(
        &self,
        ctx: &mut RunContext<'_>,
        users: Vec<i64>,
        items: Vec<i64>,
    ) -> Result<(ScalarBuffer<f32>, ScalarBuffer<i64>), PluginError> {
        let (users, items) = (Int64Array::from(users), Int64Array::from(items));
        let as_is = |input: &ModelInput, ids: &Int64Array| -> Result<ArrayRef, PluginError> {
            match input.dtype.as_str() {
                "int64" => Ok(Arc::new(ids.clone())),
                _ => model_column(input, FeatureValues::Int(ids.values().to_vec())),
            }
        };
        let mut columns = Vec::with_capacity(self.features.len());
        for (input, source) in &self.features {
            let column = match source {
                Source::UserIndex => as_is(input, &users)?,
                Source::ItemIndex => as_is(input, &items)?,
                Source::PerUser(v) => {
                    model_column(input, FeatureValues::Float(users.values().iter().map(|&u| v[u as usize]).collect()))?
                }
                Source::PerItem(v) => {
                    model_column(input, FeatureValues::Float(items.values().iter().map(|&i| v[i as usize]).collect()))?
                }
            };
            columns.push((input.input.clone(), column));
        }
        let output = ctx.score(scoring_batch(columns)?)?;
        let col = column(&output, "model output", &self.output)?;
        let scores = col.as_any().downcast_ref::<Float32Array>().ok_or_else(|| {
            PluginError::input(format!("model output `{}` must be float32, is {}", self.output, col.data_type()))
        })?;
        if scores.len() != users.len() {
            return Err(PluginError::input(format!(
                "model returned {} scores for {} pairs",
                scores.len(),
                users.len()
            )));
        }
        Ok((scores.values().clone(), items.values().clone()))
    }
}

/// Candidate items: the same for every user, or each user's own (model indices).
enum Pool {
    All(Vec<usize>),
    PerUser(HashMap<usize, Vec<usize>>),
}

impl Pool {
    /// About how many pairs a run scores: every user's candidates, before what they
    /// bought is taken out.
    fn pairs(&self, users: usize) -> usize {
        match self {
            Pool::All(items) => items.len() * users,
            Pool::PerUser(lists) => lists.values().map(Vec::len).sum(),
        }
    }

    /// The pool with `items` taken out.
    fn without(self, items: &HashSet<u32>) -> Pool {
        let keep = |list: &mut Vec<usize>| list.retain(|i| !items.contains(&(*i as u32)));
        match self {
            Pool::All(mut list) => {
                keep(&mut list);
                Pool::All(list)
            }
            Pool::PerUser(mut lists) => {
                lists.values_mut().for_each(keep);
                Pool::PerUser(lists)
            }
        }
    }
}

/// Each known user's items from input `pool` (columns `user`, `item`; ids the model does
/// not know are skipped).
fn upstream_pool(ctx: &RunContext<'_>, vocab: &Vocab) -> Result<HashMap<usize, Vec<usize>>, PluginError> {
    let t = "pool";
    let batch = ctx.input(t)?;
    let users = vocab.users.positions(column(batch, t, "user")?, "pool.user")?;
    let items = vocab.items.positions(column(batch, t, "item")?, "pool.item")?;
    let mut out: HashMap<usize, Vec<usize>> = HashMap::new();
    for (u, i) in users.into_iter().zip(items) {
        if let (Some(u), Some(i)) = (u, i) {
            out.entry(u as usize).or_default().push(i as usize);
        }
    }
    Ok(out)
}

/// The `size` items with the most distinct buyers (ties: lower index first).
/// Items in `unavailable` are left out before the pool is cut to `size`.
fn popular_pool(buyers: &[u32], size: usize, unavailable: &HashSet<u32>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..buyers.len()).filter(|&i| !unavailable.contains(&(i as u32))).collect();
    order.sort_by(|&a, &b| buyers[b].cmp(&buyers[a]).then(a.cmp(&b)));
    order.truncate(size);
    order
}

export_plugin!(Ranking, name = "ranking", version = env!("CARGO_PKG_VERSION"), stream_inputs = "interactions,users");

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::BooleanArray;
    use arrow_array::StringArray;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_array::{Int64Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    use recd_plugin_api::testing::Harness;
    use std::sync::Arc;

    fn strings(name: &str, values: &[&str]) -> (Field, Arc<dyn arrow_array::Array>) {
        (Field::new(name, DataType::Utf8, false), Arc::new(StringArray::from(values.to_vec())))
    }

    fn table(columns: Vec<(Field, Arc<dyn arrow_array::Array>)>) -> RecordBatch {
        let (fields, arrays): (Vec<Field>, Vec<_>) = columns.into_iter().unzip();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
    }

    fn vocab(id: &str, ids: &[&str]) -> RecordBatch {
        let index: Vec<i64> = (0..ids.len() as i64).collect();
        table(vec![strings(id, ids), (Field::new("index", DataType::Int64, false), Arc::new(Int64Array::from(index)))])
    }

    /// u1 bought d; u2 bought a, and b in a cancelled line only.
    fn harness(params: &str) -> Harness {
        harness_with_items(params, vocab("item_id", &["a", "b", "c", "d"]))
    }

    fn harness_with_items(params: &str, items: RecordBatch) -> Harness {
        let interactions = table(vec![
            strings("user_id", &["u1", "u2", "u2"]),
            strings("item_id", &["d", "a", "b"]),
            (Field::new("cancelled", DataType::Boolean, false), Arc::new(BooleanArray::from(vec![false, false, true]))),
        ]);
        // a stand-in model: u1 likes higher item indices, u2 lower ones
        let model = |batch: &RecordBatch| {
            let users = batch.column_by_name("user").unwrap().as_primitive::<Int64Type>();
            let items = batch.column_by_name("item").unwrap().as_primitive::<Int64Type>();
            let scores: Vec<f32> = users
                .values()
                .iter()
                .zip(items.values())
                .map(|(&u, &i)| if u == 0 { i as f32 } else { -(i as f32) })
                .collect();
            Ok(table(vec![(Field::new("score", DataType::Float32, false), Arc::new(Float32Array::from(scores)))]))
        };
        // The interactions cross as a stream, as from a host: in batches of two lines.
        Harness::new(params)
            .input("interactions", interactions)
            .streamed("interactions")
            .stream_batch_rows(2)
            .input("users", vocab("user_id", &["u1", "u2"]))
            .streamed("users")
            .input("items", items)
            .model_inputs(&[("user", "user", "int64"), ("item", "item", "int64")])
            .scorer(model)
    }

    fn list(out: &recd_plugin_api::testing::Output, user: &str) -> Vec<String> {
        out.list(user).into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn top_k_keeps_the_best_in_rank_order_ties_by_item() {
        // A small deterministic generator; many ties (scores from 8 values).
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut best = Vec::new();
        for n in [0usize, 1, 5, 10, 11, 37, 500] {
            let scores: Vec<f32> = (0..n).map(|_| (next() % 8) as f32 / 4.0).collect();
            let items: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % 1009).collect();
            for k in [1usize, 3, 10] {
                top_k(&scores, &items, k, &mut best);
                let mut all: Vec<(f32, i64)> = scores.iter().copied().zip(items.iter().copied()).collect();
                all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                all.truncate(k);
                assert_eq!(best, all, "n={n} k={k}");
            }
        }
    }

    #[test]
    fn in_a_shard_only_its_users_are_scored_and_their_lists_are_unchanged() {
        for overlap in [false, true] {
            let params = format!(r#"{{"k": 2, "overlap": {overlap}}}"#);
            let whole = harness(&params).run::<Ranking>().unwrap();
            let last_progress = |out: &recd_plugin_api::testing::Output| out.progress.last().copied();
            let shard = harness(&params).shard(|user| user == "u2").run::<Ranking>().unwrap();
            assert_eq!(shard.users(), ["u2"], "overlap {overlap}");
            assert_eq!(shard.list("u2"), whole.list("u2"), "overlap {overlap}");
            assert!(said(&shard, "a shard of the run: 1 of 2 users are other shards'"), "{:?}", shard.logs);
            // progress still counts every user, skipped or not
            assert_eq!(last_progress(&shard), last_progress(&whole));
            assert!(!said(&whole, "a shard of the run"));
        }
    }

    #[test]
    fn top_k_of_unseen_items_by_model_score() {
        let out = harness(r#"{"k": 2}"#).run::<Ranking>().unwrap();
        assert_eq!(list(&out, "u1"), ["c", "b"]);
        // a cancelled line is not a purchase: b stays a candidate for u2
        assert_eq!(list(&out, "u2"), ["b", "c"]);
        assert_eq!(out.list("u2")[0].1, -1.0);
    }

    /// Runs over users u1, u2 and items a..d with `interactions` streamed one line per
    /// batch, scoring each pair by `score(items)`.
    fn one_line_batches(
        params: &str,
        interactions: RecordBatch,
        score: impl Fn(&[i64]) -> Vec<f32> + 'static,
    ) -> recd_plugin_api::testing::Output {
        Harness::new(params)
            .input("interactions", interactions)
            .streamed("interactions")
            .stream_batch_rows(1)
            .input("users", vocab("user_id", &["u1", "u2"]))
            .input("items", vocab("item_id", &["a", "b", "c", "d"]))
            .model_inputs(&[("user", "user", "int64"), ("item", "item", "int64")])
            .scorer(move |batch: &RecordBatch| {
                let items = batch.column_by_name("item").unwrap().as_primitive::<Int64Type>();
                let scores = Float32Array::from(score(items.values()));
                Ok(table(vec![(Field::new("score", DataType::Float32, false), Arc::new(scores))]))
            })
            .run::<Ranking>()
            .unwrap()
    }

    #[test]
    fn purchases_from_a_stream_of_many_batches_count_once_and_skip_unknown_ids() {
        // u1 bought d twice (in different batches), u2 bought a and an item the model does
        // not know, and a user the model does not know bought c: one line per batch.
        let interactions = table(vec![
            strings("user_id", &["u1", "u2", "u9", "u2", "u1"]),
            strings("item_id", &["d", "a", "c", "x", "d"]),
        ]);
        // scores by item index: d, c, b, a
        let out = one_line_batches(r#"{"k": 4}"#, interactions, |items| items.iter().map(|&i| i as f32).collect());
        assert_eq!(list(&out, "u1"), ["c", "b", "a"]);
        assert_eq!(list(&out, "u2"), ["d", "c", "b"]);
        assert_eq!(out.users(), ["u1", "u2"]);
    }

    #[test]
    fn a_purchase_streamed_twice_counts_one_buyer_in_the_popular_pool() {
        // u1 bought d twice (two batches), u2 bought a: one buyer each, so the tie goes to
        // the lower index and the pool of one is [a]. Counted twice, d would take it.
        let interactions = table(vec![strings("user_id", &["u1", "u2", "u1"]), strings("item_id", &["d", "a", "d"])]);
        let params = r#"{"k": 1, "candidates": "popular", "popular_pool": 1}"#;
        let out = one_line_batches(params, interactions, |items| vec![1.0; items.len()]);
        assert_eq!(list(&out, "u1"), ["a"]);
        assert!(list(&out, "u2").is_empty());
    }

    /// Interactions of 60 users over 40 items: duplicates (counted once, a rare item
    /// bought five times by each of five users stays out of a pool of 12), cancelled
    /// lines, lines of a user and of an item the model does not know, and users 55..60
    /// with no line. As
    /// (user, item, cancelled), in an order where each user's lines are together.
    fn grouped_lines() -> Vec<(String, String, bool)> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut lines = Vec::new();
        for u in 0..55 {
            for _ in 0..1 + next(12) {
                let item = if next(25) == 0 { "zz".to_string() } else { format!("i{}", next(40) * next(40) / 40) };
                lines.push((format!("u{u}"), item, next(8) == 0));
                if next(30) == 0 {
                    lines.push(("stranger".to_string(), "i1".to_string(), false));
                }
            }
            // five users buy a rare item five times each: five buyers, not 25
            if u >= 50 {
                lines.extend(std::iter::repeat_n((format!("u{u}"), "i39".to_string(), false), 5));
            }
        }
        lines
    }

    fn lines_table(lines: &[(String, String, bool)]) -> RecordBatch {
        let users: Vec<&str> = lines.iter().map(|l| l.0.as_str()).collect();
        let items: Vec<&str> = lines.iter().map(|l| l.1.as_str()).collect();
        let cancelled = BooleanArray::from(lines.iter().map(|l| l.2).collect::<Vec<_>>());
        table(vec![
            strings("user_id", &users),
            strings("item_id", &items),
            (Field::new("cancelled", DataType::Boolean, false), Arc::new(cancelled)),
        ])
    }

    /// Ranks 60 users over 40 items with a model whose score mixes user and item.
    fn rank_lines(
        params: &str,
        lines: &[(String, String, bool)],
        batch_rows: usize,
    ) -> recd_plugin_api::testing::Output {
        let users: Vec<String> = (0..60).map(|u| format!("u{u}")).collect();
        let items: Vec<String> = (0..40).map(|i| format!("i{i}")).collect();
        let (users, items): (Vec<&str>, Vec<&str>) =
            (users.iter().map(String::as_str).collect(), items.iter().map(String::as_str).collect());
        Harness::new(params)
            .input("interactions", lines_table(lines))
            .streamed("interactions")
            .stream_batch_rows(batch_rows)
            .input("users", vocab("user_id", &users))
            .streamed("users")
            .input("items", vocab("item_id", &items))
            .model_inputs(&[("user", "user", "int64"), ("item", "item", "int64")])
            .scorer(|batch: &RecordBatch| {
                let users = batch.column_by_name("user").unwrap().as_primitive::<Int64Type>();
                let items = batch.column_by_name("item").unwrap().as_primitive::<Int64Type>();
                let scores: Vec<f32> =
                    users.values().iter().zip(items.values()).map(|(&u, &i)| ((u * 7 + i * 13) % 17) as f32).collect();
                Ok(table(vec![(Field::new("score", DataType::Float32, false), Arc::new(Float32Array::from(scores)))]))
            })
            .run::<Ranking>()
            .unwrap()
    }

    fn said(out: &recd_plugin_api::testing::Output, text: &str) -> bool {
        out.logs.iter().any(|(_, line)| line.contains(text))
    }

    #[test]
    fn grouped_interactions_read_one_user_at_a_time_give_the_lists_of_held_ones() {
        let grouped = grouped_lines();
        // The same lines in another order: u0's last line moved to the end.
        let mut moved = grouped.clone();
        let last_of_u0 = moved.iter().rposition(|l| l.0 == "u0").unwrap();
        let line = moved.remove(last_of_u0);
        moved.push(line);
        // And fully interleaved: every third line first.
        let interleaved: Vec<_> = (0..3).flat_map(|r| grouped.iter().skip(r).step_by(3).cloned()).collect();
        for params in [
            r#"{"k": 5, "batch_pairs": 50}"#,
            r#"{"k": 5, "batch_pairs": 50, "overlap": true}"#,
            r#"{"k": 3, "candidates": "popular", "popular_pool": 12, "batch_pairs": 7}"#,
            r#"{"k": 3, "candidates": "popular", "popular_pool": 12, "overlap": true}"#,
        ] {
            let reference = rank_lines(params, &grouped, 1024);
            assert!(said(&reference, "grouped by user: purchases are read one user at a time"), "{:?}", reference.logs);
            let mut want = reference.rows();
            want.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
            // every user the model knows has a list, those without a line too
            assert_eq!(reference.users().len(), 60, "{params}");
            for (lines, batch_rows, grouped_path) in
                [(&grouped, 3, true), (&moved, 1024, false), (&interleaved, 5, false), (&interleaved, 1024, false)]
            {
                let out = rank_lines(params, lines, batch_rows);
                let path = if grouped_path { "grouped by user" } else { "not grouped by user" };
                assert!(said(&out, path), "{params}: {:?}", out.logs);
                let mut got = out.rows();
                got.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
                assert_eq!(got, want, "{params}, {path}, {batch_rows} rows a batch");
            }
        }
        // The first user seen again is named.
        let out = rank_lines(r#"{"k": 1}"#, &moved, 1024);
        assert!(said(&out, &format!("user \"u0\" again at row {}", moved.len() - 1)), "{:?}", out.logs);
    }

    #[test]
    fn overlapped_batches_stop_cleanly_on_cancel_and_on_a_scoring_error() {
        // One user per batch (batch_pairs = 1), batches built on the second thread.
        let params = r#"{"k": 2, "batch_pairs": 1, "overlap": true}"#;
        let err = harness(params).cancel_after(1).run::<Ranking>().unwrap_err();
        assert_eq!(err.code, recd_plugin_api::abi::code::CANCELLED, "{err:?}");
        let err = harness(params).scorer(|_| Err("model exploded".into())).run::<Ranking>().unwrap_err();
        assert!(err.message.contains("model exploded"), "{err:?}");
        // and without a fault both ways give the same lists
        let overlapped = harness(params).run::<Ranking>().unwrap();
        let sequential = harness(r#"{"k": 2, "batch_pairs": 1, "overlap": false}"#).run::<Ranking>().unwrap();
        for user in ["u1", "u2"] {
            assert_eq!(list(&overlapped, user), list(&sequential, user));
        }
    }

    #[test]
    fn unavailable_items_do_not_take_places_in_the_popular_pool() {
        // buyers: a 1, d 1; b is out of stock. A pool of 2 is [a, d] either way, but
        // with b marked as bought by everyone it used to crowd one of them out.
        let items = vocab("item_id", &["a", "b", "c", "d"]);
        let available: Arc<dyn arrow_array::Array> = Arc::new(BooleanArray::from(vec![true, false, true, true]));
        let mut columns: Vec<(Field, Arc<dyn arrow_array::Array>)> =
            items.schema().fields().iter().zip(items.columns()).map(|(f, c)| (f.as_ref().clone(), c.clone())).collect();
        columns.push((Field::new("in_stock", DataType::Boolean, false), available));
        let params = r#"{"k": 2, "candidates": "popular", "popular_pool": 2, "available_column": "in_stock"}"#;
        let out = harness_with_items(params, table(columns)).run::<Ranking>().unwrap();
        assert_eq!(list(&out, "u1"), ["a"]);
        assert_eq!(list(&out, "u2"), ["d"]);
    }

    #[test]
    fn popular_pool_limits_candidates_to_the_most_bought_items() {
        // buyers: a 1 (u2), d 1 (u1); pool of 2 = [a, d]
        let out = harness(r#"{"k": 2, "candidates": "popular", "popular_pool": 2}"#).run::<Ranking>().unwrap();
        assert_eq!(list(&out, "u1"), ["a"]);
        assert_eq!(list(&out, "u2"), ["d"]);
    }

    #[test]
    fn unavailable_items_are_never_recommended() {
        let items = vocab("item_id", &["a", "b", "c", "d"]);
        let available: Arc<dyn arrow_array::Array> = Arc::new(BooleanArray::from(vec![true, false, true, true]));
        let mut columns: Vec<(Field, Arc<dyn arrow_array::Array>)> =
            items.schema().fields().iter().zip(items.columns()).map(|(f, c)| (f.as_ref().clone(), c.clone())).collect();
        columns.push((Field::new("in_stock", DataType::Boolean, false), available));
        let out =
            harness_with_items(r#"{"k": 2, "available_column": "in_stock"}"#, table(columns)).run::<Ranking>().unwrap();
        // u2 would get b first (see above); b is out of stock
        assert_eq!(list(&out, "u2"), ["c", "d"]);
        assert_eq!(list(&out, "u1"), ["c", "a"]);
    }

    #[test]
    fn an_upstream_pool_limits_each_users_candidates() {
        let pool = table(vec![strings("user", &["u1", "u1", "u2", "u2"]), strings("item", &["a", "b", "d", "zz"])]);
        let out = harness(r#"{"k": 2, "candidates": "upstream"}"#).input("pool", pool).run::<Ranking>().unwrap();
        assert_eq!(list(&out, "u1"), ["b", "a"]);
        // an item the model does not know (zz) is skipped
        assert_eq!(list(&out, "u2"), ["d"]);
    }

    #[test]
    fn model_inputs_bind_ids_and_item_columns_under_the_models_names() {
        let mut items = vocab("item_id", &["a", "b", "c", "d"]);
        let price: Arc<dyn arrow_array::Array> = Arc::new(arrow_array::Float64Array::from(vec![4.0, 1.0, 3.0, 2.0]));
        let mut columns: Vec<(Field, Arc<dyn arrow_array::Array>)> =
            items.schema().fields().iter().zip(items.columns()).map(|(f, c)| (f.as_ref().clone(), c.clone())).collect();
        columns.push((Field::new("price", DataType::Float64, false), price));
        items = table(columns);
        // a model scoring by price alone, with its own input names and output name
        let model = |batch: &RecordBatch| {
            let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
            if names != ["uid", "cost"] {
                return Err(format!("scoring batch columns {names:?}"));
            }
            let cost = batch.column_by_name("cost").unwrap().as_primitive::<arrow_array::types::Float32Type>();
            let schema = Schema::new(vec![Field::new("logit", DataType::Float32, false)]);
            Ok(RecordBatch::try_new(Arc::new(schema), vec![Arc::new(cost.clone())]).unwrap())
        };
        let out = harness_with_items(r#"{"k": 2, "score_output": "logit"}"#, items.clone())
            .model_inputs(&[("uid", "user", "int64"), ("cost", "items.price", "float32")])
            .scorer(model)
            .run::<Ranking>()
            .unwrap();
        // u1 bought d: a (4) then c (3); u2 bought a: c (3) then d (2)... b (1) last
        assert_eq!(list(&out, "u1"), ["a", "c"]);
        assert_eq!(list(&out, "u2"), ["c", "d"]);

        let err = harness_with_items("{}", items.clone())
            .model_inputs(&[("uid", "user", "int64"), ("cost", "items.weight", "float32")])
            .run::<Ranking>()
            .unwrap_err();
        assert!(err.message.starts_with("model_inputs.cost: input `items` has no column `weight`"), "{}", err.message);
        let err =
            harness_with_items("{}", items).model_inputs(&[("uid", "customer", "int64")]).run::<Ranking>().unwrap_err();
        assert!(err.message.starts_with("model_inputs.uid: unknown feature `customer`"), "{}", err.message);
    }

    #[test]
    fn the_check_finds_unknown_columns_and_features_before_a_run() {
        assert_eq!(harness("{}").check::<Ranking>(), Ok(()));
        let cases = [
            (
                harness(r#"{"user_column": "customer"}"#),
                "params.user_column: input `interactions` has no column `customer`",
            ),
            (
                harness(r#"{"available_column": "in_stock"}"#),
                "params.available_column: input `items` has no column `in_stock`",
            ),
            (
                harness("{}").model_inputs(&[("user", "user", "int64"), ("item", "items.price", "float32")]),
                "model_inputs.item: input `items` has no column `price`",
            ),
            (harness("{}").model_inputs(&[("user", "age", "int64")]), "model_inputs.user: unknown feature `age`"),
            (harness(r#"{"candidates": "upstream"}"#), "inputs: missing input table `pool`"),
        ];
        for (h, want) in cases {
            let err = h.check::<Ranking>().unwrap_err();
            assert!(err.message.starts_with(want), "{}", err.message);
        }
    }

    #[test]
    fn params_are_checked_before_anything_runs() {
        let cases = [
            (r#"{"k": 0}"#, "params.k: must be 1..=10000, got 0"),
            (r#"{"kk": 1}"#, "params.kk: unknown field `kk`"),
            (
                r#"{"k": 5, "candidates": "popular", "popular_pool": 3}"#,
                "params.popular_pool: must be at least k (5), got 3",
            ),
            (r#"{"candidates": "recent"}"#, "params.candidates: unknown variant `recent`"),
        ];
        for (params, want) in cases {
            let err = harness(params).run::<Ranking>().unwrap_err();
            assert_eq!(err.code, recd_plugin_api::abi::code::INVALID_PARAMS, "{params}");
            assert!(err.message.starts_with(want), "{params}: {}", err.message);
        }
    }
}
