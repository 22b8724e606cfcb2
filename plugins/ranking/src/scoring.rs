//! Scoring: (user, candidate) pair batches built from the bound model inputs, scored by the
//! host, and each user's top k kept.

use crate::*;

/// Whether `a` ranks before `b`: higher score first, then lower item index.
pub(crate) fn ranks_before(a: (f32, i64), b: (f32, i64)) -> bool {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)) == std::cmp::Ordering::Less
}

/// The `k` best of one user's (score, item) candidates, best first, kept in `top.best`.
/// With k small next to the candidates (10 of hundreds or thousands) almost every
/// candidate scores below the k-th best: a first pass finds a score the k-th best is at
/// least ([`TopK::floor`]), and only candidates not below it go through the exact order,
/// where each that ranks before the k-th so far takes its place.
#[derive(Default)]
pub(crate) struct TopK {
    pub(crate) best: Vec<(f32, i64)>,
    /// Scratch for the groups' maxima.
    maxima: Vec<f32>,
}

impl TopK {
    pub(crate) fn select(&mut self, scores: &[f32], items: &[i64], k: usize) {
        self.best.clear();
        if k == 0 {
            return;
        }
        let floor = self.floor(scores, k).unwrap_or(f32::NEG_INFINITY);
        for c in scores.iter().copied().zip(items.iter().copied()) {
            // A NaN is never below: it takes the exact path, which ranks it as total_cmp does.
            if c.0 < floor {
                continue;
            }
            if let Some(&worst) = self.best.get(k - 1) {
                if c.0 < worst.0 || !ranks_before(c, worst) {
                    continue;
                }
                self.best.pop();
            }
            let at = self.best.partition_point(|&b| ranks_before(b, c));
            self.best.insert(at, c);
        }
    }

    /// A score the k-th best is at least: the k-th largest of the maxima of groups of
    /// eight. The k groups whose maxima are that or more each hold a candidate that
    /// scores it or more, so at least k candidates do. Two vectorisable passes over the
    /// scores and a selection among their eighth; on random scores about 2k candidates
    /// are left for the exact order. A group's maximum is one of its scores (`max` passes
    /// over NaN), so NaNs do not spoil the bound. None when there are too few groups to pay.
    fn floor(&mut self, scores: &[f32], k: usize) -> Option<f32> {
        const GROUP: usize = 8;
        if scores.len() / GROUP < 2 * k {
            return None;
        }
        self.maxima.clear();
        self.maxima.extend(scores.chunks_exact(GROUP).map(|g| g.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s))));
        let (_, kth, _) = self.maxima.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        Some(*kth)
    }
}

pub(crate) fn build_batches(
    walker: Walker<'_>,
    vocab: &Vocab,
    pool: &Pool,
    others: Option<&[bool]>,
    batch_pairs: usize,
    mut take: impl FnMut(PairBatch, usize) -> bool,
) -> Result<(), PluginError> {
    let mut stamp = vec![u32::MAX; vocab.items.len()];
    // A batch ends with the user that reaches `batch_pairs`: sized for that at once, so
    // its vectors never grow (and copy) while they fill.
    let capacity = batch_pairs + pool.max_per_user();
    let mut batch = PairBatch::with_capacity(capacity);
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
        stopped = batch.items.len() >= batch_pairs
            && !take(std::mem::replace(&mut batch, PairBatch::with_capacity(capacity)), users_done);
        Ok(!stopped)
    })?;
    if !stopped {
        // The last, possibly empty, batch carries the final progress.
        take(batch, users_done);
    }
    Ok(())
}

#[derive(Default)]
pub(crate) struct PairBatch {
    pub(crate) users: Vec<i64>,
    pub(crate) items: Vec<i64>,
    /// (user index, first pair, number of pairs)
    pub(crate) spans: Vec<(usize, usize, usize)>,
}

impl PairBatch {
    fn with_capacity(pairs: usize) -> PairBatch {
        PairBatch { users: Vec::with_capacity(pairs), items: Vec::with_capacity(pairs), spans: Vec::new() }
    }
}

/// A batch's scores with its items, and each user's span of them.
pub(crate) struct Scored {
    /// (user index, first pair, number of pairs)
    pub(crate) spans: Vec<(usize, usize, usize)>,
    pub(crate) scores: ScalarBuffer<f32>,
    pub(crate) items: ScalarBuffer<i64>,
}

/// Where a model input's values come from, per (user, item) pair.
pub(crate) enum Source {
    UserIndex,
    ItemIndex,
    /// A value per model user index (from input `users`).
    PerUser(Vec<f64>),
    /// A value per model item index (from input `items`).
    PerItem(Vec<f64>),
}

/// The model inputs with their sources, and the output to read.
pub(crate) struct Scorer {
    pub(crate) features: Vec<(ModelInput, Source)>,
    pub(crate) output: String,
}

/// A feature ranking offers, as a job's `[model_inputs]` names it.
pub(crate) enum Feature<'f> {
    UserIndex,
    ItemIndex,
    /// (input table, column): `users.<column>` or `items.<column>`.
    Column(&'static str, &'f str),
}

pub(crate) fn parse_feature<'f>(input: &'f ModelInput) -> Result<Feature<'f>, PluginError> {
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
pub(crate) fn bind_features(ctx: &RunContext<'_>, vocab: &Vocab) -> Result<Vec<(ModelInput, Source)>, PluginError> {
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
pub(crate) fn per_id(
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
    /// Scores a batch's pairs; None for a batch without any (the last one may be).
    pub(crate) fn score_batch(
        &self,
        ctx: &mut RunContext<'_>,
        batch: PairBatch,
    ) -> Result<Option<Scored>, PluginError> {
        if batch.items.is_empty() {
            return Ok(None);
        }
        let (scores, items) = self.score(ctx, batch.users, batch.items)?;
        Ok(Some(Scored { spans: batch.spans, scores, items }))
    }

    /// Scores (user, item) pairs of model indices; gives back the scores and the items.
    /// The index vectors become the model's int64 columns as they are (Arrow takes the
    /// vectors over, no copy), and the items are read back from that same buffer.
    pub(crate) fn score(
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
