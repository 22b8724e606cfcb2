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

mod pools;
mod purchases;
mod scoring;

use pools::*;
use purchases::*;
use scoring::*;

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
    /// (user, item) pairs scored per host call; unset: the host's preferred size for the
    /// model's device (a GPU's), else chosen by [`auto_batch_pairs`].
    batch_pairs: Option<usize>,
    /// Build the next batch while the current one is scored, and rank scored batches on
    /// the cores left ([`Ranking::pipeline`]); default: on machines with more than two
    /// cores.
    #[serde(default = "default_overlap")]
    overlap: bool,
    /// Threads ranking scored batches in the overlapped pipeline; unset: the cores
    /// left beside the batch builder and the thread calling the model, at least one.
    ranking_threads: Option<usize>,
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
        if params.ranking_threads.is_some_and(|n| n == 0 || n > 1024) {
            return Err(PluginError::params("params.ranking_threads: must be 1..=1024"));
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

/// An interaction line as (user, item) model indices, `None` where not one.
type Line = (Option<u32>, Option<u32>);

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

    /// Scores every user's candidates batch by batch. Without `overlap` each batch is
    /// built, scored, ranked and emitted in turn on this thread: ONNX Runtime then has
    /// the cores to itself. With it, the work is a pipeline ([`Ranking::pipeline`]).
    fn score_all(
        &self,
        ctx: &mut RunContext<'_>,
        vocab: &Vocab,
        purchases: &Purchases,
        pool: &Pool,
        scorer: &Scorer,
    ) -> Result<(), PluginError> {
        let total = vocab.users.len() as u64;
        // The job's size, else the host's for the model's device (a GPU's), else ours.
        let batch_pairs = self
            .params
            .batch_pairs
            .or_else(|| ctx.preferred_batch_rows())
            .unwrap_or_else(|| auto_batch_pairs(pool.pairs(vocab.users.len())));
        let walker = match purchases {
            Purchases::Held(held) => Walker::Held(held),
            Purchases::Grouped(columns) => Walker::Grouped(columns.open(ctx)?, columns),
        };
        let others = other_shards(ctx, vocab);
        let others = others.as_deref();
        if self.params.overlap {
            return self.pipeline(ctx, vocab, (walker, pool, others, batch_pairs), scorer);
        }
        let mut result = Ok(());
        let built = build_batches(walker, vocab, pool, others, batch_pairs, |batch, users_done| {
            let step = score_step(ctx, scorer, batch, |ctx, scored| ctx.emit(self.select(vocab, &scored)?));
            ctx.progress(users_done as u64, total);
            step.map_err(|e| result = Err(e)).is_ok()
        });
        result.and(built)
    }

    /// The overlapped pipeline: one thread builds the batches, this one scores them (the
    /// host's callbacks are called from the thread that called `run`), and `selectors`
    /// threads keep each user's top k and make the rows, which this thread emits between
    /// model calls. So on a host with cores to spare the model never waits for the
    /// batch before it to be built or ranked. Every channel is bounded by a few batches
    /// (the rows going back are bounded by the batches in flight), so memory does not
    /// grow with the users. Rows are emitted in the order ranking finishes; each user's
    /// rows stay together in one batch.
    fn pipeline(
        &self,
        ctx: &mut RunContext<'_>,
        vocab: &Vocab,
        (walker, pool, others, batch_pairs): (Walker<'_>, &Pool, Option<&[bool]>, usize),
        scorer: &Scorer,
    ) -> Result<(), PluginError> {
        use std::sync::{Mutex, mpsc};
        let total = vocab.users.len() as u64;
        let selectors = self.params.ranking_threads.unwrap_or_else(selector_threads);
        let (built_tx, built_rx) = mpsc::sync_channel::<(PairBatch, usize)>(1);
        let (scored_tx, scored_rx) = mpsc::sync_channel::<Scored>(selectors);
        let scored_rx = Mutex::new(scored_rx);
        let (rows_tx, rows_rx) = mpsc::channel::<Result<RecordBatch, PluginError>>();
        std::thread::scope(|scope| {
            let producer = scope.spawn(move || {
                build_batches(walker, vocab, pool, others, batch_pairs, |b, done| built_tx.send((b, done)).is_ok())
            });
            let ranked: Vec<_> = (0..selectors)
                .map(|_| {
                    let (scored_rx, rows_tx) = (&scored_rx, rows_tx.clone());
                    scope.spawn(move || {
                        // The lock is held only to take the next batch.
                        while let Some(scored) = scored_rx.lock().ok().and_then(|rx| rx.recv().ok()) {
                            if rows_tx.send(self.select(vocab, &scored)).is_err() {
                                break;
                            }
                        }
                    })
                })
                .collect();
            drop(rows_tx);
            // Emits the rows ranked so far; with `wait`, every row still to come.
            let emit_ready = |ctx: &mut RunContext<'_>, wait: bool| -> Result<(), PluginError> {
                while let Some(rows) = if wait { rows_rx.recv().ok() } else { rows_rx.try_recv().ok() } {
                    ctx.emit(rows?)?;
                }
                Ok(())
            };
            let mut result = Ok(());
            for (batch, users_done) in built_rx.iter() {
                let step = score_step(ctx, scorer, batch, |_, scored| {
                    scored_tx.send(scored).map_err(|_| PluginError::internal("a ranking thread stopped"))
                });
                let step = step.and_then(|()| emit_ready(ctx, false));
                ctx.progress(users_done as u64, total);
                if let Err(e) = step {
                    result = Err(e);
                    break;
                }
            }
            // Hang up first: a producer blocked on a full channel then stops, and the
            // ranking threads finish what they hold and end.
            drop(built_rx);
            drop(scored_tx);
            if result.is_ok() {
                result = emit_ready(ctx, true);
            }
            drop(rows_rx);
            let joined = ranked.into_iter().map(|t| t.join()).collect::<Result<Vec<()>, _>>();
            let built = producer.join();
            match (built, joined) {
                (Ok(built), Ok(_)) => result.and(built),
                _ => Err(PluginError::internal("a ranking pipeline thread panicked")),
            }
        })
    }

    /// Each user's top k of a scored batch, as rows to emit.
    fn select(&self, vocab: &Vocab, scored: &Scored) -> Result<RecordBatch, PluginError> {
        let mut out = OutputRows::new();
        let mut top = TopK::default();
        for &(u, start, n) in &scored.spans {
            top.select(&scored.scores[start..start + n], &scored.items[start..start + n], self.params.k);
            for &(score, item) in &top.best {
                out.push(vocab.users.id(u as u32), vocab.items.id(item as u32), score);
            }
        }
        out.into_batch()
    }
}

/// Scores a batch unless the run is cancelled, and hands the scores to `then` (a batch
/// without pairs has none).
fn score_step(
    ctx: &mut RunContext<'_>,
    scorer: &Scorer,
    batch: PairBatch,
    then: impl FnOnce(&mut RunContext<'_>, Scored) -> Result<(), PluginError>,
) -> Result<(), PluginError> {
    if ctx.is_cancelled() {
        return Err(PluginError::cancelled());
    }
    match scorer.score_batch(ctx, batch)? {
        Some(scored) => then(ctx, scored),
        None => Ok(()),
    }
}

/// Threads that rank scored batches in the pipeline: the cores left beside the batch
/// builder and the thread that calls the model, at least one.
fn selector_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(2)).max(1)
}

export_plugin!(Ranking, name = "ranking", version = env!("CARGO_PKG_VERSION"), stream_inputs = "interactions,users");

#[cfg(test)]
mod tests;
