//! cold-start: time-decayed popularity, globally and per segment, with optional
//! exploration of new items.
//!
//! Each non-cancelled interaction counts `0.5^(age / half_life)`, its age measured from the
//! newest interaction in the data (so a run is reproducible, whatever the wall clock).
//! Emitted lists, best first, `k` items each:
//! - `__default__`: the most popular items overall;
//! - `__segment__:<segment>`: the most popular in each segment (with `segment_column`);
//! - per user: their segment's ranking, then the global one, minus what they bought. Users
//!   are those of `interactions` and of the optional `users` table (users with no history
//!   are the coldest). With `min_interactions`, only cold users get a list: those with
//!   fewer distinct items bought; warm users are left to other strategies.
//!
//! A user's segment comes from `users` when that table has the segment column, else from
//! their latest interaction row; segment rankings count each row in its user's segment
//! (from `users`) or in the row's own segment (from `interactions`).
//!
//! Segment rankings are shrunk towards the global one by the segment's size: an item's
//! segment score is `(w_s(i) + m * w(i) / W) / (W_s + m)`, with `w_s`, `W_s` the segment's
//! decayed weights (of the item, in all), `w`, `W` the global ones and `m` =
//! `segment_shrinkage` (decayed interactions; default 100): a small segment's few
//! interactions bend the global ranking instead of replacing it.
//!
//! Exploration (`explore_share` > 0): new items (first bought within `new_item_days` of the
//! newest interaction) have no popularity to speak of yet, so the last
//! `round(k * explore_share)` slots of every list may go to new items picked by Thompson
//! sampling: each new item's buy rate gets a Beta(1 + s, 1 + f) posterior, s its distinct
//! buyers, f the other users active since it appeared; one draw per item and list, the
//! highest draws win among new items not in the list and not bought by the user. With
//! `exploration = "earned"` (the default) a drawn item takes a slot only if its draw beats
//! the buy rate of the item it would displace (`(1 + buyers) / (2 + active users)` over
//! the same window), so exploring costs no hits in expectation; `"always"` gives the slots
//! to new items whatever their draw. Each list's RNG is seeded from `seed` and the list's
//! key, so a rerun gives the same lists. Explored items score just below the list's lowest
//! exploit score, decreasing, so the served order is the chosen order.
//!
//! A ranking table that declares `fallback = ["cold-start"]` answers a user it lacks with
//! that user's list here, and a user without one (never seen, or warm) with `__default__`.

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow_array::RecordBatch;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_distr::{Beta, Distribution};
use recd_plugin_api::columns::{booleans, column, ids_as_strings, seconds};
use recd_plugin_api::{CheckContext, LogLevel, OutputRows, PluginError, RunContext, Strategy, export_plugin};
use serde::Deserialize;

pub use recd_plugin_api::contract::{DEFAULT_USER, SEGMENT_USER_PREFIX as SEGMENT_PREFIX};

const DAY: f64 = 86_400.0;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default = "default_half_life")]
    half_life_days: f64,
    segment_column: Option<String>,
    #[serde(default = "default_user_column")]
    user_column: String,
    #[serde(default = "default_item_column")]
    item_column: String,
    #[serde(default = "default_time_column")]
    time_column: String,
    min_interactions: Option<usize>,
    #[serde(default)]
    explore_share: f64,
    #[serde(default = "default_new_item_days")]
    new_item_days: f64,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default = "default_shrinkage")]
    segment_shrinkage: f64,
    #[serde(default)]
    exploration: Exploration,
}

/// Whether a drawn new item must beat the item it displaces (see the module docs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Exploration {
    #[default]
    Earned,
    Always,
}

fn default_shrinkage() -> f64 {
    100.0
}

fn default_k() -> usize {
    10
}
fn default_half_life() -> f64 {
    30.0
}
fn default_user_column() -> String {
    "user_id".into()
}
fn default_item_column() -> String {
    "item_id".into()
}
fn default_time_column() -> String {
    "ts".into()
}
fn default_new_item_days() -> f64 {
    14.0
}
fn default_seed() -> u64 {
    42
}

impl Params {
    fn validate(&self) -> Result<(), PluginError> {
        if self.k == 0 || self.k > 1000 {
            return Err(PluginError::params(format!("params.k: must be 1..=1000, got {}", self.k)));
        }
        for (key, days) in [("half_life_days", self.half_life_days), ("new_item_days", self.new_item_days)] {
            if !(days.is_finite() && days > 0.0) {
                return Err(PluginError::params(format!(
                    "params.{key}: must be a positive number of days, got {days}"
                )));
            }
        }
        if !(self.segment_shrinkage.is_finite() && self.segment_shrinkage >= 0.0) {
            return Err(PluginError::params(format!(
                "params.segment_shrinkage: must be a number >= 0, got {}",
                self.segment_shrinkage
            )));
        }
        if let Some(n @ 0) = self.min_interactions {
            return Err(PluginError::params(format!("params.min_interactions: must be at least 1, got {n}")));
        }
        if !(0.0..1.0).contains(&self.explore_share) {
            return Err(PluginError::params(format!(
                "params.explore_share: must be in [0, 1), got {}",
                self.explore_share
            )));
        }
        Ok(())
    }

    /// Slots per list that go to new items (at most k, as `explore_share` < 1).
    fn explore_slots(&self) -> usize {
        (self.k as f64 * self.explore_share).round() as usize
    }
}

struct ColdStart {
    params: Params,
}

impl Strategy for ColdStart {
    fn new(params_json: &str) -> Result<Self, PluginError> {
        let params: Params = recd_plugin_api::params::parse(params_json)?;
        params.validate()?;
        Ok(ColdStart { params })
    }

    fn check(&self, ctx: &CheckContext) -> Result<(), PluginError> {
        let p = &self.params;
        ctx.require("interactions", &p.user_column, "params.user_column")?;
        ctx.require("interactions", &p.item_column, "params.item_column")?;
        ctx.require("interactions", &p.time_column, "params.time_column")?;
        let users = if ctx.has_input("users") { Some(ctx.input("users")?) } else { None };
        if let Some(users) = users {
            column(users, "users", &p.user_column).map_err(|e| PluginError::params(format!("inputs.users: {e}")))?;
        }
        segment_source(ctx.input("interactions")?, users, p).map(|_| ())
    }

    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
        let p = &self.params;
        let data = Data::read(ctx, p)?;
        let newest = data.rows.iter().map(|r| r.time).fold(f64::MIN, f64::max);
        let pop = Popularity::new(&data.rows, newest, p.half_life_days * DAY, p.segment_shrinkage);
        let explorer = Explorer::new(&data.rows, newest, p)?;
        let lists = Lists { k: p.k, explorer: explorer.as_ref() };
        let nobody = HashSet::new();

        let mut out = OutputRows::new();
        push_list(&mut out, DEFAULT_USER, &lists.compose(DEFAULT_USER, pop.global.iter().copied(), &nobody));
        for (seg, ranking) in &pop.segments {
            let key = format!("{SEGMENT_PREFIX}{seg}");
            push_list(&mut out, &key, &lists.compose(&key, ranking.iter().copied(), &nobody));
        }
        let mut cold = 0;
        for (user, info) in &data.users {
            if p.min_interactions.is_some_and(|m| info.bought.len() >= m) {
                continue; // warm: other strategies serve this user
            }
            push_list(&mut out, user, &lists.compose(user, pop.for_user(info), &info.bought));
            cold += 1;
        }
        if let Some(e) = &explorer {
            ctx.log(LogLevel::Debug, &e.describe());
        }
        ctx.log(
            LogLevel::Info,
            &format!(
                "{} items ({} new), {} segments, {} users, {cold} user lists",
                pop.global.len(),
                explorer.as_ref().map_or(0, |e| e.items.len()),
                pop.segments.len(),
                data.users.len(),
            ),
        );
        ctx.emit(out.into_batch()?)
    }
}

/// Decayed popularity rankings, best first; ties by item id.
struct Popularity<'a> {
    global: Vec<(&'a str, f64)>,
    segments: BTreeMap<&'a str, Vec<(&'a str, f64)>>,
}

impl<'a> Popularity<'a> {
    fn new(rows: &'a [Row], newest: f64, half_life: f64, shrinkage: f64) -> Popularity<'a> {
        let mut global: HashMap<&str, f64> = HashMap::new();
        let mut by_segment: HashMap<&str, HashMap<&str, f64>> = HashMap::new();
        for r in rows {
            let w = 0.5f64.powf((newest - r.time) / half_life);
            *global.entry(&r.item).or_default() += w;
            if let Some(seg) = &r.segment {
                *by_segment.entry(seg).or_default().entry(&r.item).or_default() += w;
            }
        }
        let total: f64 = global.values().sum();
        let segments = by_segment.iter().map(|(s, m)| (*s, ranked(&shrunk(m, &global, total, shrinkage)))).collect();
        Popularity { global: ranked(&global), segments }
    }

    /// A user's exploit ranking: their segment's, then the global one, minus what they
    /// bought, each item once.
    fn for_user<'s>(&'s self, info: &'s UserInfo) -> impl Iterator<Item = (&'a str, f64)> + 's {
        let seg_list = info.segment.as_deref().and_then(|s| self.segments.get(s)).map(Vec::as_slice).unwrap_or(&[]);
        let mut seen: HashSet<&str> = HashSet::new();
        seg_list
            .iter()
            .chain(self.global.iter())
            .copied()
            .filter(move |(i, _)| !info.bought.contains(*i) && seen.insert(i))
    }
}

/// A segment's weights shrunk towards the global shares: `(w_s(i) + m * w(i) / W) / (W_s +
/// m)` for every item (an item the segment never had gets its global share's part).
fn shrunk<'a>(
    segment: &HashMap<&'a str, f64>,
    global: &HashMap<&'a str, f64>,
    total: f64,
    m: f64,
) -> HashMap<&'a str, f64> {
    if m == 0.0 || total <= 0.0 {
        return segment.clone();
    }
    let seg_total: f64 = segment.values().sum();
    global
        .iter()
        .map(|(item, w)| {
            let own = segment.get(item).copied().unwrap_or(0.0);
            (*item, (own + m * w / total) / (seg_total + m))
        })
        .collect()
}

fn ranked<'a>(weights: &HashMap<&'a str, f64>) -> Vec<(&'a str, f64)> {
    let mut v: Vec<(&str, f64)> = weights.iter().map(|(i, w)| (*i, *w)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    v
}

/// Builds each emitted list from an exploit ranking and, with exploration, new items.
struct Lists<'e, 'a> {
    k: usize,
    explorer: Option<&'e Explorer<'a>>,
}

impl<'a> Lists<'_, 'a> {
    /// The first exploit items, then up to `slots` explored new items; when too few new
    /// items are eligible, more exploit items fill the slots left (before the explored
    /// ones, which keep the lowest scores).
    fn compose(
        &self,
        key: &str,
        ranking: impl Iterator<Item = (&'a str, f64)>,
        bought: &HashSet<String>,
    ) -> Vec<(&'a str, f32)> {
        let slots = self.explorer.map_or(0, |e| e.slots);
        let exploit: Vec<(&str, f64)> = ranking.take(self.k + slots).collect();
        let mut list: Vec<(&str, f32)> = exploit.iter().take(self.k - slots).map(|(i, w)| (*i, *w as f32)).collect();
        let Some(explorer) = self.explorer else {
            strictly_decreasing(&mut list);
            return list;
        };
        let drawn = explorer.pick(key, slots, |i| !bought.contains(i) && !list.iter().any(|(l, _)| *l == i));
        // Earned: the j-th drawn item must beat the buy rate of the exploit item it would
        // displace (the one that fills slot j otherwise).
        let displaced: Vec<&str> = exploit.iter().skip(self.k - slots).map(|(i, _)| *i).collect();
        let picks: Vec<&'a str> = drawn
            .iter()
            .enumerate()
            .filter(|(j, (_, draw))| match (explorer.mode, displaced.get(*j)) {
                (Exploration::Always, _) | (_, None) => true,
                (Exploration::Earned, Some(item)) => *draw > explorer.rate(item),
            })
            .map(|(_, (i, _))| *i)
            .collect();
        let spare = exploit.iter().skip(self.k - slots).filter(|(i, _)| !picks.contains(i));
        list.extend(spare.take(slots - picks.len()).map(|(i, w)| (*i, *w as f32)));
        strictly_decreasing(&mut list);
        let floor = list.iter().map(|(_, s)| *s).reduce(f32::min);
        list.extend(picks.iter().copied().zip(explore_scores(floor, picks.len())));
        list
    }
}

/// Lowers each score that is not below the one before it to just below it. A user's list
/// chains their segment's ranking with the global one, whose weights are larger; served
/// score-descending, the global items would jump ahead. With strictly decreasing scores
/// the served order is the chosen order (ties too, which Redis orders by member).
fn strictly_decreasing(list: &mut [(&str, f32)]) {
    for j in 1..list.len() {
        if list[j].1 >= list[j - 1].1 {
            list[j].1 = list[j - 1].1.next_down();
        }
    }
}

/// Scores for `n` explored items: strictly below `floor` (the lowest exploit score, or 1
/// for a list without one) and decreasing, so that the served order, score descending, is
/// the chosen order. The step is a fraction of the floor, so the scores stay distinct as
/// f32 and, for a positive floor, positive.
fn explore_scores(floor: Option<f32>, n: usize) -> impl Iterator<Item = f32> {
    let top = f64::from(floor.unwrap_or(1.0));
    let step = top.abs().max(1e-6) / (n as f64 + 1.0);
    (1..=n).map(move |j| (top - step * j as f64) as f32)
}

/// New items and their Beta posteriors over the chance that an active user buys them.
struct Explorer<'a> {
    /// By item id, so that the draws' order does not depend on hashing.
    items: Vec<NewItem<'a>>,
    slots: usize,
    seed: u64,
    mode: Exploration,
    /// Distinct buyers of every item within the new-item window, and the users active in
    /// it: an established item's buy rate, to compare a draw with.
    window_buyers: HashMap<&'a str, usize>,
    window_active: usize,
}

struct NewItem<'a> {
    item: &'a str,
    /// Distinct buyers since the item appeared.
    buyers: usize,
    /// Users active since the item appeared who did not buy it.
    passed: usize,
    posterior: Beta<f64>,
}

impl<'a> Explorer<'a> {
    /// None when exploration is off (no slot to fill).
    fn new(rows: &'a [Row], newest: f64, p: &Params) -> Result<Option<Explorer<'a>>, PluginError> {
        let slots = p.explore_slots();
        if slots == 0 {
            return Ok(None);
        }
        let mut first_seen: HashMap<&str, f64> = HashMap::new();
        let mut last_active: HashMap<&str, f64> = HashMap::new();
        for r in rows {
            first_seen.entry(&r.item).and_modify(|t| *t = t.min(r.time)).or_insert(r.time);
            last_active.entry(&r.user).and_modify(|t| *t = t.max(r.time)).or_insert(r.time);
        }
        let window = p.new_item_days * DAY;
        first_seen.retain(|_, t| newest - *t <= window);
        let mut buyers: HashMap<&str, HashSet<&str>> = HashMap::new();
        for r in rows.iter().filter(|r| first_seen.contains_key(r.item.as_str())) {
            buyers.entry(&r.item).or_default().insert(&r.user);
        }
        let mut last: Vec<f64> = last_active.into_values().collect();
        last.sort_by(f64::total_cmp);
        let mut items = first_seen
            .iter()
            .map(|(item, since)| {
                let active = last.len() - last.partition_point(|t| t < since);
                NewItem::new(item, buyers[item].len(), active)
            })
            .collect::<Result<Vec<_>, _>>()?;
        items.sort_by(|a, b| a.item.cmp(b.item));
        let window_start = newest - window;
        let mut in_window: HashMap<&str, HashSet<&str>> = HashMap::new();
        for r in rows.iter().filter(|r| r.time >= window_start) {
            in_window.entry(&r.item).or_default().insert(&r.user);
        }
        let window_buyers = in_window.into_iter().map(|(i, u)| (i, u.len())).collect();
        let window_active = last.len() - last.partition_point(|t| *t < window_start);
        Ok(Some(Explorer { items, slots, seed: p.seed, mode: p.exploration, window_buyers, window_active }))
    }

    /// An established item's buy rate over the new-item window: the mean of its Beta(1 +
    /// buyers, 1 + others active) posterior, as new items' rates are drawn.
    fn rate(&self, item: &str) -> f64 {
        let buyers = self.window_buyers.get(item).copied().unwrap_or(0);
        (1.0 + buyers as f64) / (2.0 + self.window_active.max(buyers) as f64)
    }

    /// The first new items with their counts, for the run's log.
    fn describe(&self) -> String {
        let shown: Vec<String> = self
            .items
            .iter()
            .take(20)
            .map(|it| format!("{} ({} bought, {} passed)", it.item, it.buyers, it.passed))
            .collect();
        format!("new items ({} in all): {}", self.items.len(), shown.join(", "))
    }

    /// Up to `n` eligible new items with their draws, highest draw first. Every new item is
    /// drawn, eligible or not, so a list's draws depend only on the seed and its key.
    fn pick(&self, key: &str, n: usize, eligible: impl Fn(&str) -> bool) -> Vec<(&'a str, f64)> {
        let mut rng = ChaCha8Rng::seed_from_u64(list_seed(self.seed, key));
        let mut draws: Vec<(&'a str, f64)> =
            self.items.iter().map(|it| (it.item, it.posterior.sample(&mut rng))).filter(|(i, _)| eligible(i)).collect();
        draws.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        draws.truncate(n);
        draws
    }
}

impl<'a> NewItem<'a> {
    fn new(item: &'a str, buyers: usize, active: usize) -> Result<NewItem<'a>, PluginError> {
        // every buyer is active since the item appeared; the clamp only guards the maths
        let passed = active.saturating_sub(buyers);
        let posterior = Beta::new(1.0 + buyers as f64, 1.0 + passed as f64)
            .map_err(|e| PluginError::internal(format!("posterior of item `{item}`: {e}")))?;
        Ok(NewItem { item, buyers, passed, posterior })
    }
}

/// A list's RNG seed: FNV-1a (64 bits) over the job's seed and the list's key. Written out
/// because std's hashers are not guaranteed stable across Rust releases, and reruns must
/// give the same lists.
fn list_seed(seed: u64, key: &str) -> u64 {
    fnv1a(seed.to_le_bytes().into_iter().chain(key.bytes()))
}

fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// One non-cancelled interaction.
struct Row {
    user: String,
    item: String,
    time: f64,
    segment: Option<String>,
}

#[derive(Default)]
struct UserInfo {
    bought: HashSet<String>,
    segment: Option<String>,
}

/// Where users' segments come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SegmentSource {
    None,
    Interactions,
    Users,
}

struct Data {
    rows: Vec<Row>,
    users: BTreeMap<String, UserInfo>,
}

impl Data {
    fn read(ctx: &RunContext<'_>, p: &Params) -> Result<Data, PluginError> {
        let interactions = ctx.input("interactions")?;
        // the `users` table is optional: its absence is not an error
        let users = ctx.input("users").ok();
        let source = segment_source(interactions, users, p)?;
        let mut data = Data::from_interactions(interactions, p, source == SegmentSource::Interactions)?;
        if let Some(users) = users {
            data.add_users(users, p, source == SegmentSource::Users)?;
        }
        Ok(data)
    }

    fn from_interactions(batch: &RecordBatch, p: &Params, with_segments: bool) -> Result<Data, PluginError> {
        let t = "interactions";
        let users = ids_as_strings(column(batch, t, &p.user_column)?, &format!("{t}.{}", p.user_column))?;
        let items = ids_as_strings(column(batch, t, &p.item_column)?, &format!("{t}.{}", p.item_column))?;
        let times = seconds(column(batch, t, &p.time_column)?, &format!("{t}.{}", p.time_column))?;
        let segments = match (&p.segment_column, with_segments) {
            (Some(c), true) => ids_as_strings(column(batch, t, c)?, c)?,
            _ => vec![None; batch.num_rows()],
        };
        let cancelled = match batch.column_by_name("cancelled") {
            Some(c) => booleans(c.as_ref(), "cancelled")?,
            None => vec![Some(false); batch.num_rows()],
        };
        let mut rows = Vec::with_capacity(batch.num_rows());
        let mut out_users: BTreeMap<String, UserInfo> = BTreeMap::new();
        for r in 0..batch.num_rows() {
            let (Some(user), Some(item), Some(time)) = (&users[r], &items[r], times[r]) else { continue };
            if cancelled[r] == Some(true) {
                continue;
            }
            let info = out_users.entry(user.clone()).or_default();
            info.bought.insert(item.clone());
            if segments[r].is_some() {
                info.segment = segments[r].clone(); // the latest row's segment wins
            }
            rows.push(Row { user: user.clone(), item: item.clone(), time, segment: segments[r].clone() });
        }
        if rows.is_empty() {
            return Err(PluginError::input("input `interactions` has no usable rows"));
        }
        Ok(Data { rows, users: out_users })
    }

    /// Adds the `users` table's users (with no history: an empty list of bought items)
    /// and, when segments come from it, gives every user and row that user's segment.
    fn add_users(&mut self, batch: &RecordBatch, p: &Params, with_segments: bool) -> Result<(), PluginError> {
        let t = "users";
        let users = ids_as_strings(column(batch, t, &p.user_column)?, &format!("{t}.{}", p.user_column))?;
        let segments = match (&p.segment_column, with_segments) {
            (Some(c), true) => ids_as_strings(column(batch, t, c)?, c)?,
            _ => vec![None; batch.num_rows()],
        };
        for (user, segment) in users.into_iter().zip(segments) {
            let Some(user) = user else { continue };
            let info = self.users.entry(user).or_default();
            if segment.is_some() {
                info.segment = segment; // the latest row's segment wins
            }
        }
        if with_segments {
            for r in &mut self.rows {
                r.segment = self.users.get(&r.user).and_then(|u| u.segment.clone());
            }
        }
        Ok(())
    }
}

/// `users` when it has the segment column, else `interactions`; neither: a params error
/// listing what the tables have.
fn segment_source(
    interactions: &RecordBatch,
    users: Option<&RecordBatch>,
    p: &Params,
) -> Result<SegmentSource, PluginError> {
    let Some(c) = &p.segment_column else { return Ok(SegmentSource::None) };
    if users.is_some_and(|u| u.column_by_name(c).is_some()) {
        return Ok(SegmentSource::Users);
    }
    let Err(missing) = column(interactions, "interactions", c) else { return Ok(SegmentSource::Interactions) };
    let mut why = missing.message;
    if let Some(Err(e)) = users.map(|u| column(u, "users", c)) {
        why = format!("{}; {why}", e.message);
    }
    Err(PluginError::params(format!("params.segment_column: {why}")))
}

/// Adds one list's rows.
fn push_list(out: &mut OutputRows, user: &str, picks: &[(&str, f32)]) {
    for (item, score) in picks {
        out.push(user, item, *score);
    }
}

export_plugin!(ColdStart, name = "cold-start", version = env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{BooleanArray, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;
    use arrow_array::Int64Array;
    use recd_plugin_api::testing::{Harness, Output};

    const DAY: i64 = 86_400;

    /// (user, item, day, country)
    fn data(rows: &[(&str, &str, i64, &str)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("item_id", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("country", DataType::Utf8, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.2 * DAY).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    /// `data(rows)` plus a `cancelled` column.
    fn with_cancelled(rows: &[(&str, &str, i64, &str)], cancelled: &[bool]) -> RecordBatch {
        let base = data(rows);
        let mut fields: Vec<Field> = base.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("cancelled", DataType::Boolean, false));
        let mut columns = base.columns().to_vec();
        columns.push(Arc::new(BooleanArray::from(cancelled.to_vec())));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    /// A `users` table: (user_id, column `name` with the given values).
    fn users(ids: &[&str], name: &str, values: &[&str]) -> RecordBatch {
        let schema =
            Schema::new(vec![Field::new("user_id", DataType::Utf8, false), Field::new(name, DataType::Utf8, false)]);
        let columns: Vec<arrow_array::ArrayRef> =
            vec![Arc::new(StringArray::from(ids.to_vec())), Arc::new(StringArray::from(values.to_vec()))];
        RecordBatch::try_new(Arc::new(schema), columns).unwrap()
    }

    fn items(out: &Output, user: &str) -> Vec<String> {
        out.list(user).into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn recent_interactions_weigh_more_and_segments_get_their_own_lists() {
        // newest interaction: day 30. Half-life 10 days: weights day 30 = 1, day 20 = 0.5, day 0 = 0.125.
        // a: 3 old buys (0.375); b: 1 new (1.0); c: 1 at day 20 (0.5), only in FR.
        let rows = [
            ("u1", "a", 0, "UK"),
            ("u2", "a", 0, "UK"),
            ("u3", "a", 0, "UK"),
            ("u4", "b", 30, "UK"),
            ("u5", "c", 20, "FR"),
        ];
        let out =
            Harness::new(r#"{"k": 3, "half_life_days": 10, "segment_column": "country", "segment_shrinkage": 0}"#)
                .input("interactions", data(&rows))
                .run::<ColdStart>()
                .unwrap();
        let items = |u: &str| items(&out, u);
        assert_eq!(items(DEFAULT_USER), ["b", "c", "a"]);
        let default = out.list(DEFAULT_USER);
        assert!((default[2].1 - 0.375).abs() < 1e-6, "{default:?}");
        assert_eq!(items("__segment__:UK"), ["b", "a"]);
        assert_eq!(items("__segment__:FR"), ["c"]);
        // u5 (FR) bought c: FR's list is spent, then the global ranking fills in
        assert_eq!(items("u5"), ["b", "a"]);
        // u1 (UK) bought a
        assert_eq!(items("u1"), ["b", "c"]);
    }

    #[test]
    fn min_interactions_lists_only_cold_users() {
        // distinct non-cancelled items: u1 1 (a); u2 2 (a, b); u3 1 (a twice; b cancelled);
        // u4 3; u5 1
        let rows = [
            ("u1", "a", 0, "UK"),
            ("u2", "a", 0, "UK"),
            ("u2", "b", 1, "UK"),
            ("u3", "a", 0, "UK"),
            ("u3", "a", 1, "UK"),
            ("u3", "b", 2, "UK"),
            ("u4", "a", 0, "UK"),
            ("u4", "b", 1, "UK"),
            ("u4", "c", 2, "UK"),
            ("u5", "d", 2, "UK"),
        ];
        let cancelled = [false, false, false, false, false, true, false, false, false, false];
        let users_with = |params: &str| {
            let out = Harness::new(params)
                .input("interactions", with_cancelled(&rows, &cancelled))
                .run::<ColdStart>()
                .unwrap();
            out.users()
        };
        assert_eq!(users_with(r#"{"min_interactions": 2}"#), [DEFAULT_USER, "u1", "u3", "u5"]);
        assert_eq!(users_with(r#"{"min_interactions": 3}"#), [DEFAULT_USER, "u1", "u2", "u3", "u5"]);
        assert_eq!(users_with(r#"{"min_interactions": 1}"#), [DEFAULT_USER]);
        assert_eq!(users_with("{}"), [DEFAULT_USER, "u1", "u2", "u3", "u4", "u5"]);
        // segment lists stay, whoever is warm
        let out = Harness::new(r#"{"min_interactions": 1, "segment_column": "country", "segment_shrinkage": 0}"#)
            .input("interactions", with_cancelled(&rows, &cancelled))
            .run::<ColdStart>()
            .unwrap();
        assert_eq!(out.users(), ["__default__", "__segment__:UK"]);
    }

    #[test]
    fn users_table_gives_segments_and_lists_users_without_history() {
        // all on one day, so each buy weighs 1. Global: d 3, c 2, a 1, b 1.
        let rows = [
            ("u1", "a", 10, "UK"),
            ("u2", "b", 10, "UK"),
            ("u2", "c", 10, "UK"),
            ("u3", "c", 10, "UK"),
            ("u3", "d", 10, "UK"),
            ("u4", "d", 10, "UK"),
            ("u5", "d", 10, "UK"),
        ];
        // the users table wins over the interactions' `country`; z and w have no history;
        // u3, u4, u5 are not in it, so they have no segment
        let table = users(&["u1", "u2", "z", "w"], "country", &["FR", "FR", "FR", "DE"]);
        let out = Harness::new(r#"{"k": 3, "segment_column": "country", "segment_shrinkage": 0}"#)
            .input("interactions", data(&rows))
            .input("users", table)
            .run::<ColdStart>()
            .unwrap();
        assert_eq!(
            out.users(),
            ["__default__", "__segment__:FR", "u1", "u2", "u3", "u4", "u5", "w", "z"],
            "no UK segment: segments come from `users`"
        );
        // FR rows: u1 a, u2 b, u2 c: 1 each, ties by id
        assert_eq!(items(&out, "__segment__:FR"), ["a", "b", "c"]);
        assert_eq!(items(&out, DEFAULT_USER), ["d", "c", "a"]);
        assert_eq!(items(&out, "z"), ["a", "b", "c"]);
        assert_eq!(items(&out, "w"), ["d", "c", "a"], "no DE list: the global one");
        assert_eq!(items(&out, "u1"), ["b", "c", "d"]);
        assert_eq!(items(&out, "u3"), ["a", "b"]);

        // without segment_column the table still adds its users
        let out = Harness::new(r#"{"k": 3}"#)
            .input("interactions", data(&rows))
            .input("users", users(&["z"], "country", &["FR"]))
            .run::<ColdStart>()
            .unwrap();
        assert_eq!(items(&out, "z"), ["d", "c", "a"]);
    }

    #[test]
    fn segment_column_comes_from_either_table_or_the_error_lists_both() {
        let rows = [("u1", "a", 0, "UK"), ("u2", "b", 0, "FR")];
        // `users` without the column: the interactions' column serves
        let out = Harness::new(r#"{"segment_column": "country", "segment_shrinkage": 0}"#)
            .input("interactions", data(&rows))
            .input("users", users(&["u1"], "tier", &["gold"]))
            .run::<ColdStart>()
            .unwrap();
        assert_eq!(items(&out, "__segment__:UK"), ["a"]);

        let err = Harness::new(r#"{"segment_column": "planet"}"#)
            .input("interactions", data(&rows))
            .input("users", users(&["u1"], "tier", &["gold"]))
            .run::<ColdStart>()
            .unwrap_err();
        assert_eq!(err.code, recd_plugin_api::abi::code::INVALID_PARAMS);
        assert_eq!(
            err.message,
            "params.segment_column: input `users` has no column `planet` (columns: user_id, tier); \
             input `interactions` has no column `planet` (columns: user_id, item_id, ts, country)"
        );
    }

    /// Newest day 100. Old items p1..p4 (day 0, 5/4/3/2 buyers); r1 first bought day 80;
    /// new (within 14 days): n1 (day 90, 95), n2 (95), n3 (100).
    #[test]
    fn served_order_is_the_chosen_order_segment_first() {
        // segment "fr": a (1 buyer); globally b and c have more buyers than a
        let rows = [
            ("u1", "a", 100, "fr"),
            ("u2", "b", 100, "uk"),
            ("u3", "b", 100, "uk"),
            ("u4", "c", 100, "uk"),
            ("u5", "c", 100, "uk"),
            ("u6", "z", 100, "fr"),
        ];
        let out = Harness::new(r#"{"k": 3, "segment_column": "country", "segment_shrinkage": 0}"#)
            .input("interactions", data(&rows))
            .run::<ColdStart>()
            .unwrap();
        // u6's list: the segment's a, then the global b, c (z is theirs already)
        let list = out.list("u6");
        let chosen: Vec<&str> = list.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(chosen, ["a", "b", "c"]);
        let mut served = list.clone();
        served.sort_by(|x, y| y.1.total_cmp(&x.1).then(y.0.cmp(&x.0)));
        assert_eq!(served, list, "scores must fall strictly along the list");
    }

    #[test]
    fn the_check_names_unknown_columns_before_a_run() {
        let rows = data(&explore_rows());
        assert_eq!(
            Harness::new(r#"{"segment_column": "country"}"#).input("interactions", rows.clone()).check::<ColdStart>(),
            Ok(())
        );
        let cases = [
            (r#"{"time_column": "when"}"#, "params.time_column: input `interactions` has no column `when`"),
            (r#"{"segment_column": "planet"}"#, "params.segment_column: input `interactions` has no column `planet`"),
        ];
        for (params, want) in cases {
            let err = Harness::new(params).input("interactions", rows.clone()).check::<ColdStart>().unwrap_err();
            assert!(err.message.starts_with(want), "{}", err.message);
        }
    }

    fn explore_rows() -> Vec<(&'static str, &'static str, i64, &'static str)> {
        let mut rows = Vec::new();
        let a = ["a1", "a2", "a3", "a4", "a5"];
        for (item, n) in [("p1", 5), ("p2", 4), ("p3", 3), ("p4", 2)] {
            rows.extend(a[..n].iter().map(|u| (*u, item, 0, "UK")));
        }
        rows.extend([
            ("b1", "r1", 80, "UK"),
            ("b2", "r1", 100, "UK"),
            ("b1", "n1", 90, "UK"),
            ("b3", "n1", 95, "UK"),
            ("b2", "n2", 95, "UK"),
            ("b3", "n3", 100, "UK"),
        ]);
        rows
    }

    fn explore(params: &str) -> Output {
        Harness::new(params).input("interactions", data(&explore_rows())).run::<ColdStart>().unwrap()
    }

    #[test]
    fn exploration_fills_the_last_slots_with_new_items_not_bought() {
        let out = explore(r#"{"k": 4, "explore_share": 0.5, "half_life_days": 1000, "exploration": "always"}"#);
        // last activity: a* day 0, b1 90, b2 100, b3 100. n1: 2 buyers of 3 active since
        // day 90; n2, n3: 1 of 2 since day 95 / 100. r1 (20 days old) is not new.
        let stats = "new items (3 in all): n1 (2 bought, 1 passed), n2 (1 bought, 1 passed), n3 (1 bought, 1 passed)";
        assert!(out.logs.iter().any(|(_, m)| m == stats), "{:?}", out.logs);
        let bought = |u: &str| -> Vec<&str> { explore_rows().into_iter().filter(|r| r.0 == u).map(|r| r.1).collect() };
        let new = ["n1", "n2", "n3"];
        for user in out.users() {
            let list = out.list(&user);
            assert_eq!(list.len(), 4, "{user}: {list:?}");
            let explored: Vec<&str> = list[2..].iter().map(|(i, _)| i.as_str()).collect();
            if user != "b3" {
                assert!(explored.iter().all(|i| new.contains(i)), "{user}: {list:?}");
            }
            assert!(list.iter().all(|(i, _)| !bought(&user).contains(&i.as_str())), "{user}: {list:?}");
            assert!(!list[..2].iter().any(|(i, _)| explored.contains(&i.as_str())), "{user}: {list:?}");
            assert!(list.windows(2).all(|w| w[0].1 > w[1].1), "served order = chosen order: {user}: {list:?}");
        }
        // b3 bought n1 and n3: one new item left (n2), so p3 takes the other slot. Weights
        // at day 0: 0.5^0.1 = 0.933 per buy; n2 scores half of p3's.
        let b3 = out.list("b3");
        assert_eq!(b3.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>(), ["p1", "p2", "p3", "n2"]);
        let p3 = 3.0 * 0.5f32.powf(0.1);
        assert!((b3[2].1 - p3).abs() < 1e-5 && (b3[3].1 - p3 / 2.0).abs() < 1e-5, "{b3:?}");

        // r1 is new when the window reaches day 80 (inclusive): 2 buyers of 3 active since
        let out = explore(r#"{"k": 4, "explore_share": 0.5, "new_item_days": 20, "exploration": "always"}"#);
        assert!(out.logs.iter().any(|(_, m)| m.contains("(4 in all)") && m.contains("r1 (2 bought, 1 passed)")));
        // round(4 * 0.1) = 0 slots: no exploration at all
        assert_eq!(explore(r#"{"k": 4, "explore_share": 0.1}"#).rows(), explore(r#"{"k": 4}"#).rows());
    }

    #[test]
    fn exploration_is_reproducible_and_differs_by_seed_and_list() {
        let params =
            |seed: u64| format!(r#"{{"k": 4, "explore_share": 0.5, "seed": {seed}, "exploration": "always"}}"#);
        let first = explore(&params(42));
        assert_eq!(first.rows(), explore(&params(42)).rows());
        assert_ne!(first.rows(), explore(&params(7)).rows());
        // a4 and a5 see the same eligible new items; their draws differ by key
        let explored = |u: &str| first.list(u)[2..].iter().map(|(i, _)| i.clone()).collect::<Vec<_>>();
        let all: HashSet<Vec<String>> = ["a3", "a4", "a5", DEFAULT_USER].iter().map(|u| explored(u)).collect();
        assert!(all.len() > 1, "{all:?}");
    }

    #[test]
    fn new_items_with_more_early_buyers_win_most_draws() {
        // "old" is the top exploit item; hot and cold appear on day 100, when c0..c9 are
        // active (those who buy neither buy old). 400 users without history each get
        // [old, one explored item].
        let hot_vs_cold = |hot_buyers: usize| {
            let c: Vec<String> = (0..10).map(|n| format!("c{n}")).collect();
            let mut rows: Vec<(&str, &str, i64, &str)> = Vec::new();
            for u in ["o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9", "o10", "o11", "o12"] {
                rows.push((u, "old", 0, "UK"));
            }
            for (n, u) in c.iter().enumerate() {
                let item = if n < hot_buyers {
                    "hot"
                } else if n == hot_buyers {
                    "cold"
                } else {
                    "old"
                };
                rows.push((u, item, 100, "UK"));
            }
            let z: Vec<String> = (0..400).map(|n| format!("z{n}")).collect();
            let z_refs: Vec<&str> = z.iter().map(String::as_str).collect();
            let out =
                Harness::new(r#"{"k": 2, "explore_share": 0.5, "half_life_days": 10000, "exploration": "always"}"#)
                    .input("interactions", data(&rows))
                    .input("users", users(&z_refs, "country", &vec!["UK"; z.len()]))
                    .run::<ColdStart>()
                    .unwrap();
            let picks: Vec<String> = z.iter().map(|u| items(&out, u)).map(|l| l[1].clone()).collect();
            assert!(z.iter().all(|u| items(&out, u)[0] == "old"));
            assert!(picks.iter().all(|i| i == "hot" || i == "cold"));
            picks.iter().filter(|i| *i == "hot").count()
        };
        // hot 8 of 10: Beta(9, 3), mean 0.75, against cold 1 of 10: Beta(2, 10), mean
        // 0.17. Cold's draw is higher ~0.1% of the time.
        let hot = hot_vs_cold(8);
        assert!(hot >= 360, "{hot}");
        // hot 3 of 10: Beta(4, 8), mean 0.33: hot still wins most lists, yet sampling (not
        // the posterior mean) gives cold a share, ~15.5% (62 of 400).
        let hot = hot_vs_cold(3);
        assert!((300..380).contains(&hot), "{hot}");
    }

    #[test]
    fn segments_are_shrunk_towards_the_global_ranking_by_their_size() {
        // Segment A: nine buys of g1; segment B: one buy of b1. All on the newest day, so
        // each weighs 1: W = 10, W_B = 1.
        let mut rows: Vec<(&str, &str, i64, &str)> =
            (0..9).map(|n| (["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"][n], "g1", 100, "A")).collect();
        rows.push(("b0", "b1", 100, "B"));
        let segment_b = |m: f64| {
            let params = format!(r#"{{"k": 2, "segment_column": "country", "segment_shrinkage": {m}}}"#);
            let out = Harness::new(&params).input("interactions", data(&rows)).run::<ColdStart>().unwrap();
            out.list(&format!("{SEGMENT_PREFIX}B"))
        };
        // m = 0: B's own ranking alone.
        assert_eq!(segment_b(0.0)[0].0, "b1");
        // m = 1: b1 (1 + 1 * 1/10) / 2 = 0.55 beats g1 (0 + 1 * 9/10) / 2 = 0.45.
        let one = segment_b(1.0);
        assert_eq!((one[0].0.as_str(), one[1].0.as_str()), ("b1", "g1"));
        assert!((one[0].1 - 0.55).abs() < 1e-6 && (one[1].1 - 0.45).abs() < 1e-6, "{one:?}");
        // m = 10: g1 9/11 = 0.818 beats b1 2/11 = 0.182: one buy no longer outweighs nine.
        let ten = segment_b(10.0);
        assert_eq!((ten[0].0.as_str(), ten[1].0.as_str()), ("g1", "b1"));
        assert!((ten[0].1 - 9.0 / 11.0).abs() < 1e-6, "{ten:?}");
    }

    #[test]
    fn earned_exploration_takes_a_slot_only_when_the_draw_beats_the_displaced_item() {
        // old1 and old2 are established (first bought on day 0); on day 100 the ten users
        // c0..c9 are active: all buy old1, nine buy old2 (buy rate (1 + 9) / (2 + 10) =
        // 0.83), and `new` buyers of them buy the new item. 200 users without history get
        // [old1, old2 or the new item].
        let explored = |new_buyers: usize, mode: &str| {
            let c: Vec<String> = (0..10).map(|n| format!("c{n}")).collect();
            let mut rows: Vec<(&str, &str, i64, &str)> = vec![("o1", "old1", 0, "UK"), ("o1", "old2", 0, "UK")];
            for (n, u) in c.iter().enumerate() {
                rows.push((u, "old1", 100, "UK"));
                if n < 9 {
                    rows.push((u, "old2", 100, "UK"));
                }
                if n < new_buyers {
                    rows.push((u, "new", 100, "UK"));
                }
            }
            let z: Vec<String> = (0..200).map(|n| format!("z{n}")).collect();
            let z_refs: Vec<&str> = z.iter().map(String::as_str).collect();
            let params =
                format!(r#"{{"k": 2, "explore_share": 0.5, "half_life_days": 10000, "exploration": "{mode}"}}"#);
            let out = Harness::new(&params)
                .input("interactions", data(&rows))
                .input("users", users(&z_refs, "country", &vec!["UK"; z.len()]))
                .run::<ColdStart>()
                .unwrap();
            assert!(z.iter().all(|u| items(&out, u)[0] == "old1"));
            z.iter().filter(|u| items(&out, u)[1] == "new").count()
        };
        // One buyer of ten: Beta(2, 10) beats 0.83 about once in a million draws.
        assert_eq!(explored(1, "earned"), 0, "a weak new item displaces nothing");
        assert_eq!(explored(1, "always"), 200, "always: the slot is the new item's");
        // Ten of ten: Beta(11, 1) beats 0.83 with probability 1 - 0.83^11 = 0.87.
        let strong = explored(10, "earned");
        assert!((150..=200).contains(&strong), "{strong}");
    }

    #[test]
    fn list_seeds_are_fnv1a_of_seed_and_key() {
        // published FNV-1a 64 test vectors: the seeds must never change with the toolchain
        assert_eq!(fnv1a("".bytes()), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a".bytes()), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a("foobar".bytes()), 0x8594_4171_f739_67e8);
        assert_eq!(list_seed(42, "u1"), fnv1a([42, 0, 0, 0, 0, 0, 0, 0, b'u', b'1'].into_iter()));
    }

    #[test]
    fn bad_params_name_the_key() {
        let cases = [
            (r#"{"half_life_days": -1}"#, "params.half_life_days: must be a positive number of days, got -1"),
            (r#"{"k": 0}"#, "params.k: must be 1..=1000, got 0"),
            (r#"{"halflife": 3}"#, "params.halflife: unknown field `halflife`"),
            (r#"{"min_interactions": 0}"#, "params.min_interactions: must be at least 1, got 0"),
            (r#"{"min_interactions": -2}"#, "params.min_interactions: invalid value: integer `-2`"),
            (r#"{"explore_share": 1.5}"#, "params.explore_share: must be in [0, 1), got 1.5"),
            (r#"{"segment_shrinkage": -1}"#, "params.segment_shrinkage: must be a number >= 0, got -1"),
            (r#"{"explore_share": 1}"#, "params.explore_share: must be in [0, 1), got 1"),
            (r#"{"explore_share": -0.1}"#, "params.explore_share: must be in [0, 1), got -0.1"),
            (r#"{"new_item_days": -1}"#, "params.new_item_days: must be a positive number of days, got -1"),
            (r#"{"new_item_days": 0}"#, "params.new_item_days: must be a positive number of days, got 0"),
            (r#"{"seed": -1}"#, "params.seed: invalid value: integer `-1`"),
        ];
        for (params, want) in cases {
            let err = Harness::new(params).run::<ColdStart>().unwrap_err();
            assert_eq!(err.code, recd_plugin_api::abi::code::INVALID_PARAMS, "{params}");
            assert!(err.message.starts_with(want), "{params}: {}", err.message);
        }
        let err = Harness::new(r#"{"segment_column": "planet"}"#)
            .input("interactions", data(&[("u1", "a", 0, "UK")]))
            .run::<ColdStart>()
            .unwrap_err();
        assert!(
            err.message.contains("params.segment_column: input `interactions` has no column `planet`"),
            "{}",
            err.message
        );
    }
}
