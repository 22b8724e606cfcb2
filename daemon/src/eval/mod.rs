//! `recd eval TABLE`: quality of a published list table against the interactions after a
//! cut-off. The lists are read over the socket, as an app would read them.
//!
//! Protocol: interactions before `--cutoff` are the past (what users had, how popular
//! items were); a user's relevant items are those they bought from the cut-off on and had
//! not bought before (`--include-repeats` keeps repeats). Users with no relevant item are
//! not counted; a counted user without a list scores zero.

use crate::quality as metrics;

mod record;
pub use record::{send_record, serving_version};

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use chrono::NaiveDateTime;
use recd_plugin_api::columns::{booleans, column, float_lists, ids_as_strings, seconds};
use serde::Serialize;

use crate::job::Input;
use crate::resp::Frame;

#[derive(clap::Args)]
pub struct EvalArgs {
    pub table: String,
    /// Interactions (CSV or Parquet); those from --cutoff on are the held-out truth
    #[arg(long)]
    pub truth: PathBuf,
    /// Date (2011-11-01) or RFC 3339 time splitting past from held-out
    #[arg(long)]
    pub cutoff: String,
    #[arg(long, default_value_t = 10, conflicts_with = "churn")]
    pub k: usize,
    #[arg(long, default_value = "user_id")]
    pub user_column: String,
    #[arg(long, default_value = "item_id")]
    pub item_column: String,
    #[arg(long, default_value = "ts")]
    pub time_column: String,
    /// Count items a user had bought before the cut-off as relevant too
    #[arg(long, conflicts_with = "churn")]
    pub include_repeats: bool,
    /// Item categories for intra-list diversity and calibration KL: FILE:COLUMN (items
    /// keyed by --item-column; an item listed on several rows has each row's category)
    #[arg(long, value_parser = file_and_column, conflicts_with = "churn")]
    pub categories: Option<(PathBuf, String)>,
    /// Splits one --categories cell into several (`|` for `Drama|Comedy`), as the diversity
    /// plugin's category_separator does
    #[arg(long, requires = "categories", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub category_separator: Option<String>,
    /// Item embeddings for intra-list diversity by distance: FILE:COLUMN, a list or
    /// fixed-size list of floats per item (items keyed by --item-column), e.g. a ranking
    /// model's item_factors.parquet:embedding. The distance of two items is (1 - cosine) / 2
    #[arg(long, value_parser = file_and_column, conflicts_with = "churn")]
    pub embeddings: Option<(PathBuf, String)>,
    /// Count only users with at most this many distinct items before the cut-off (cold
    /// users; 0 = users new after the cut-off)
    #[arg(long, conflicts_with_all = ["warm_only", "cold_only", "churn"])]
    pub max_past_items: Option<usize>,
    /// Count only users with at least one item before the cut-off
    #[arg(long, conflicts_with_all = ["cold_only", "churn"])]
    pub warm_only: bool,
    /// Count only users new after the cut-off (as --max-past-items 0)
    #[arg(long, conflicts_with = "churn")]
    pub cold_only: bool,
    /// Score only the table's own lists: a user answered by a fallback counts as having
    /// no list (by default a fallback's answer is scored as what the app shows)
    #[arg(long, conflicts_with = "churn")]
    pub own_lists_only: bool,
    /// Score a churn table instead (hashes with a probability field): ROC AUC and log-loss
    /// of each user's probability against "bought nothing within --horizon-days of the
    /// cut-off", over the users who bought before it. The list flags (--k, --cold-only,
    /// --categories, ...) are refused with it, and the churn flags without it
    #[arg(long)]
    pub churn: bool,
    #[arg(long, default_value_t = 90, requires = "churn")]
    pub horizon_days: u32,
    #[arg(long, default_value = "probability", requires = "churn")]
    pub probability_field: String,
    /// With --churn: a hash field naming each user's risk tier; each tier's churn rate
    /// (its precision as a "will churn" call) is reported. Users without it are left out
    #[arg(long, default_value = "tier", requires = "churn")]
    pub tier_field: String,
}

fn file_and_column(text: &str) -> Result<(PathBuf, String), String> {
    match text.rsplit_once(':') {
        Some((file, col)) if !file.is_empty() && !col.is_empty() => Ok((PathBuf::from(file), col.to_string())),
        _ => Err(format!("expected FILE:COLUMN, got {text:?}")),
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub table: String,
    pub k: usize,
    pub cutoff: String,
    pub users: usize,
    pub users_with_list: usize,
    /// Of the counted users, those whose list came from a fallback (scored as theirs
    /// unless --own-lists-only).
    pub users_from_fallback: usize,
    pub precision: f64,
    pub recall: f64,
    pub ndcg: f64,
    pub map: f64,
    pub hit_rate: f64,
    pub coverage: f64,
    pub novelty: Option<f64>,
    pub intra_list_diversity: Option<f64>,
    /// Mean calibration KL (Steck 2018) between each user's category mix before the
    /// cut-off and their top k's, with --categories, over users with history and a list.
    pub calibration_kl: Option<f64>,
    /// Mean pairwise embedding distance in the top k ((1 - cosine) / 2, in [0, 1]), with
    /// --embeddings; items without an embedding are left out of the pairs.
    pub embedding_diversity: Option<f64>,
    /// For an A/B experiment, the same metrics over each variant's users.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantReport>,
}

/// One variant of an experiment, scored over the users it is shown to.
#[derive(Debug, Serialize)]
pub struct VariantReport {
    pub variant: String,
    #[serde(flatten)]
    pub report: Report,
}

/// One interaction: user, item, when.
type Row = (String, String, NaiveDateTime);

pub fn run(args: &EvalArgs, socket: &Path) -> anyhow::Result<Report> {
    let cutoff = parse_cutoff(&args.cutoff)?;
    let rows = read_interactions(args)?;
    let (past, future): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.2 < cutoff);
    let mut had: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (u, i, _) in &past {
        had.entry(u.as_str()).or_default().insert(i.as_str());
    }
    let mut popularity: HashMap<&str, usize> = HashMap::new();
    for items in had.values() {
        for i in items {
            *popularity.entry(i).or_default() += 1;
        }
    }
    let mut relevant: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (u, i, _) in &future {
        let before = had.get(u.as_str()).is_some_and(|s| s.contains(i.as_str()));
        if args.include_repeats || !before {
            relevant.entry(u.as_str()).or_default().insert(i.as_str());
        }
    }
    let catalogue: HashSet<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    // With --max-past-items (--cold-only: 0) only cold users count, with --warm-only only
    // the others: the rest leave the truth altogether.
    let past = |u: &str| had.get(u).map_or(0, HashSet::len);
    if let Some(max) = args.max_past_items.or(args.cold_only.then_some(0)) {
        relevant.retain(|u, _| past(u) <= max);
    }
    if args.warm_only {
        relevant.retain(|u, _| past(u) > 0);
    }

    let mut users: Vec<&str> = relevant.keys().copied().collect();
    users.sort_unstable();
    let fetched = fetch_lists(socket, &args.table, &users, args.k)?;
    let from_fallback: HashSet<&str> =
        users.iter().zip(&fetched).filter(|(_, a)| a.fallback).map(|(u, _)| *u).collect();
    let lists: HashMap<&str, Vec<&str>> = users
        .iter()
        .zip(&fetched)
        .filter(|(_, a)| !(a.items.is_empty() || (args.own_lists_only && a.fallback)))
        .map(|(u, a)| (*u, a.items.iter().map(String::as_str).collect()))
        .collect();
    let categories = args
        .categories
        .as_ref()
        .map(|(file, col)| read_categories(file, &args.item_column, col, args.category_separator.as_deref()))
        .transpose()?;
    let embeddings =
        args.embeddings.as_ref().map(|(file, col)| read_embeddings(file, &args.item_column, col)).transpose()?;
    let truth = Truth {
        had: &had,
        popularity: &popularity,
        relevant: &relevant,
        catalogue: catalogue.len(),
        from_fallback: &from_fallback,
    };
    let extra = Extra { categories: categories.as_ref(), embeddings: embeddings.as_ref() };
    let mut report = score(args, &users, &lists, &truth, &extra);
    // An experiment's users are also scored per variant (the variant each user is shown).
    if let Some(variants) = fetch_variants(socket, &args.table, &users)? {
        let mut names: Vec<&str> = variants.iter().flatten().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let group: Vec<&str> =
                users.iter().zip(&variants).filter(|(_, v)| v.as_deref() == Some(name)).map(|(u, _)| *u).collect();
            let mut r = score(args, &group, &lists, &truth, &extra);
            r.table = format!("{} variant {name}", args.table);
            report.variants.push(VariantReport { variant: name.to_string(), report: r });
        }
    }
    Ok(report)
}

/// What the held-out data says: each user's past items, items' past buyers, each user's
/// relevant items from the cut-off on, the catalogue's size.
struct Truth<'a> {
    had: &'a HashMap<&'a str, HashSet<&'a str>>,
    popularity: &'a HashMap<&'a str, usize>,
    relevant: &'a HashMap<&'a str, HashSet<&'a str>>,
    catalogue: usize,
    /// Users a fallback answered.
    from_fallback: &'a HashSet<&'a str>,
}

/// The optional item data: categories and embeddings.
struct Extra<'a> {
    categories: Option<&'a HashMap<String, Vec<String>>>,
    embeddings: Option<&'a HashMap<String, Vec<f32>>>,
}

/// The metrics over `users` (sorted) with their `lists`.
fn score(
    args: &EvalArgs,
    users: &[&str],
    lists: &HashMap<&str, Vec<&str>>,
    truth: &Truth<'_>,
    extra: &Extra<'_>,
) -> Report {
    let lists: HashMap<&str, Vec<&str>> = users.iter().filter_map(|u| lists.get(u).map(|l| (*u, l.clone()))).collect();
    let relevant: HashMap<&str, HashSet<&str>> =
        users.iter().filter_map(|u| truth.relevant.get(u).map(|r| (*u, r.clone()))).collect();
    let (had, popularity) = (truth.had, truth.popularity);
    let (m, counted) = metrics::mean_at_k(&lists, &relevant, args.k);
    // Means in user order (sorted), so the last bits are the same on every run.
    let in_order = || users.iter().filter_map(|u| lists.get(u));
    let novelty = mean(in_order().filter_map(|l| metrics::novelty(l, args.k, popularity, had.len())));
    let diversity = extra.categories.and_then(|cat| {
        // the share of categories two items do not have in common (1 for an item without one)
        let of = |i: &str| cat.get(i).map_or(&[][..], Vec::as_slice);
        let distance = |a: &str, b: &str| 1.0 - recd_plugin_api::categories::jaccard(of(a), of(b));
        mean(in_order().filter_map(|l| metrics::intra_list_diversity(l, args.k, distance)))
    });
    let calibration_kl = extra.categories.and_then(|cat| {
        mean(users.iter().filter_map(|u| {
            let history = had.get(u)?;
            // history in item order: the sum is then the same on every run
            let mut history: Vec<&str> = history.iter().copied().collect();
            history.sort_unstable();
            metrics::calibration_kl(history, lists.get(u)?, args.k, |i| cat.get(i).map_or(&[][..], Vec::as_slice))
        }))
    });
    let embedding_diversity = extra.embeddings.and_then(|emb| {
        mean(in_order().filter_map(|l| {
            let known: Vec<&str> = l.iter().take(args.k).copied().filter(|i| emb.contains_key(*i)).collect();
            metrics::intra_list_diversity(&known, args.k, |a, b| metrics::cosine_distance(&emb[a], &emb[b]))
        }))
    });
    Report {
        table: args.table.clone(),
        k: args.k,
        cutoff: args.cutoff.clone(),
        users: counted,
        users_with_list: lists.len(),
        users_from_fallback: users.iter().filter(|u| truth.from_fallback.contains(*u)).count(),
        precision: m.precision,
        recall: m.recall,
        ndcg: m.ndcg,
        map: m.ap,
        hit_rate: m.hit,
        coverage: metrics::coverage(lists.values(), args.k, truth.catalogue),
        novelty,
        intra_list_diversity: diversity,
        calibration_kl,
        embedding_diversity,
        variants: Vec::new(),
    }
}

/// Each user's variant when `table` is an A/B experiment (`HGET <experiment>:<user>
/// variant` answers), else None (a list table answers WRONGTYPE, a missing one nothing).
fn fetch_variants(socket: &Path, table: &str, users: &[&str]) -> anyhow::Result<Option<Vec<Option<String>>>> {
    let Some(first) = users.first() else { return Ok(None) };
    // An experiment's key answers both fields; a hash table with a `variant` field alone
    // is not taken for one.
    let key = format!("{table}:{first}").into_bytes();
    let probe: Vec<Vec<Vec<u8>>> =
        ["variant", "table"].iter().map(|f| vec![b"HGET".to_vec(), key.clone(), f.as_bytes().to_vec()]).collect();
    let answers = crate::client::pipeline(socket, &probe)?;
    if answers.iter().all(|a| matches!(a, Frame::Bulk(_))) && answers.len() == 2 {
        return Ok(Some(fetch_text(socket, table, users, "variant")?));
    }
    Ok(None)
}

/// `recd eval --churn`: how well a churn table's probabilities rank who actually left.
#[derive(Debug, Serialize)]
pub struct ChurnReport {
    pub table: String,
    pub cutoff: String,
    pub horizon_days: u32,
    /// Users with an interaction before the cut-off.
    pub users: usize,
    /// Of those, users the table has a probability for.
    pub users_scored: usize,
    pub churned: usize,
    pub base_rate: f64,
    pub roc_auc: Option<f64>,
    pub log_loss: Option<f64>,
    /// Log-loss of always predicting the observed base rate: the bar a model must clear.
    pub log_loss_base_rate: Option<f64>,
    pub brier: Option<f64>,
    /// Brier score of always predicting the base rate.
    pub brier_base_rate: Option<f64>,
    /// Ten equal-width bins of the probability: mean predicted vs observed churn.
    pub reliability: Vec<metrics::ReliabilityBin>,
    /// (false positive rate, true positive rate) at each distinct probability.
    pub roc: Vec<(f64, f64)>,
    /// Per tier (the --tier-field value), highest churn rate first.
    pub tiers: Vec<TierReport>,
}

/// How one risk tier did: its users, how many churned, and that share (the tier's
/// precision when read as "these will churn").
#[derive(Debug, Serialize)]
pub struct TierReport {
    pub tier: String,
    pub users: usize,
    pub churned: usize,
    pub precision: f64,
}

fn tier_reports(tiers: &[Option<String>], labels: &[bool]) -> Vec<TierReport> {
    let mut by_tier: std::collections::BTreeMap<&str, (usize, usize)> = std::collections::BTreeMap::new();
    for (t, &y) in tiers.iter().zip(labels) {
        if let Some(t) = t {
            let e = by_tier.entry(t.as_str()).or_default();
            e.0 += 1;
            e.1 += usize::from(y);
        }
    }
    let mut out: Vec<TierReport> = by_tier
        .into_iter()
        .map(|(tier, (users, churned))| TierReport {
            tier: tier.to_string(),
            users,
            churned,
            precision: churned as f64 / users as f64,
        })
        .collect();
    out.sort_by(|a, b| b.precision.total_cmp(&a.precision).then_with(|| a.tier.cmp(&b.tier)));
    out
}

pub fn run_churn(args: &EvalArgs, socket: &Path) -> anyhow::Result<ChurnReport> {
    let cutoff = parse_cutoff(&args.cutoff)?;
    let end = cutoff + chrono::Duration::days(i64::from(args.horizon_days));
    let rows = read_interactions(args)?;
    let mut stayed: HashMap<&str, bool> = HashMap::new();
    for (u, _, t) in &rows {
        if *t < cutoff {
            stayed.entry(u.as_str()).or_insert(false);
        }
    }
    for (u, _, t) in &rows {
        if *t >= cutoff
            && *t < end
            && let Some(s) = stayed.get_mut(u.as_str())
        {
            *s = true;
        }
    }
    let mut users: Vec<&str> = stayed.keys().copied().collect();
    users.sort_unstable();
    let probabilities = fetch_field(socket, &args.table, &users, &args.probability_field)?;
    let tier_of = fetch_text(socket, &args.table, &users, &args.tier_field)?;
    let (mut scores, mut labels, mut tiers) = (Vec::new(), Vec::new(), Vec::new());
    for ((u, p), t) in users.iter().zip(probabilities).zip(tier_of) {
        if let Some(p) = p {
            scores.push(p);
            labels.push(!stayed[u]);
            tiers.push(t);
        }
    }
    let churned = labels.iter().filter(|&&l| l).count();
    let base_rate = if labels.is_empty() { 0.0 } else { churned as f64 / labels.len() as f64 };
    Ok(ChurnReport {
        table: args.table.clone(),
        cutoff: args.cutoff.clone(),
        horizon_days: args.horizon_days,
        users: users.len(),
        users_scored: scores.len(),
        churned,
        base_rate,
        roc_auc: metrics::roc_auc(&scores, &labels),
        log_loss: metrics::log_loss(&scores, &labels),
        log_loss_base_rate: metrics::log_loss(&vec![base_rate; labels.len()], &labels),
        brier: metrics::brier(&scores, &labels),
        brier_base_rate: metrics::brier(&vec![base_rate; labels.len()], &labels),
        reliability: metrics::reliability(&scores, &labels, 10),
        roc: metrics::roc_curve(&scores, &labels),
        tiers: tier_reports(&tiers, &labels),
    })
}

pub fn render_churn(r: &ChurnReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "churn table {} against {} days from {} on: {} users bought before, {} scored, {} churned (base rate {:.4})",
        r.table, r.horizon_days, r.cutoff, r.users, r.users_scored, r.churned, r.base_rate
    );
    for (_, name, v) in r.measures() {
        let _ = writeln!(s, "  {name:<22}{}", v.map_or("n/a".to_string(), |v| format!("{v:.4}")));
    }
    if !r.reliability.is_empty() {
        let _ = writeln!(s, "reliability (probability bin: users, mean predicted, observed churn)");
        for b in &r.reliability {
            let _ =
                writeln!(s, "  [{:.1}, {:.1}){:>8}   {:.4}   {:.4}", b.lo, b.hi, b.count, b.mean_predicted, b.observed);
        }
    }
    if !r.tiers.is_empty() {
        let _ = writeln!(s, "tiers (users, churned, precision)");
        for t in &r.tiers {
            let _ = writeln!(s, "  {:<12}{:>8}{:>8}   {:.4}", t.tier, t.users, t.churned, t.precision);
        }
    }
    s
}

/// Each user's hash field `field` as a number, read with HGET over the socket, pipelined.
fn fetch_field(socket: &Path, table: &str, users: &[&str], field: &str) -> anyhow::Result<Vec<Option<f64>>> {
    fetch_text(socket, table, users, field)?
        .into_iter()
        .map(|v| {
            v.map(|text| {
                text.parse().map_err(|_| anyhow::anyhow!("{table}: field `{field}` holds {text:?}, not a number"))
            })
            .transpose()
        })
        .collect()
}

/// Each user's hash field `field` as text (None where the user or field is absent).
fn fetch_text(socket: &Path, table: &str, users: &[&str], field: &str) -> anyhow::Result<Vec<Option<String>>> {
    let mut out = Vec::with_capacity(users.len());
    for chunk in users.chunks(1000) {
        let requests: Vec<Vec<Vec<u8>>> = chunk
            .iter()
            .map(|u| vec![b"HGET".to_vec(), format!("{table}:{u}").into_bytes(), field.as_bytes().to_vec()])
            .collect();
        for frame in crate::client::pipeline(socket, &requests)? {
            match frame {
                Frame::Bulk(b) => out.push(Some(String::from_utf8_lossy(&b).into_owned())),
                Frame::Error(e) => anyhow::bail!("reading {table}: {e}"),
                _ => out.push(None),
            }
        }
    }
    Ok(out)
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

impl Report {
    /// Each measure as (key in a record, label in the text, value when measured).
    fn measures(&self) -> [(&'static str, &'static str, Option<f64>); 10] {
        [
            ("precision@k", "precision@k", Some(self.precision)),
            ("recall@k", "recall@k", Some(self.recall)),
            ("ndcg@k", "ndcg@k", Some(self.ndcg)),
            ("map@k", "map@k", Some(self.map)),
            ("hit_rate@k", "hit rate@k", Some(self.hit_rate)),
            ("coverage", "coverage", Some(self.coverage)),
            ("novelty", "novelty (bits)", self.novelty),
            ("intra_list_diversity", "intra-list diversity", self.intra_list_diversity),
            ("calibration_kl", "calibration kl", self.calibration_kl),
            ("embedding_diversity", "embedding diversity", self.embedding_diversity),
        ]
    }
}

impl ChurnReport {
    /// Each measure as (key in a record, label in the text, value when measured).
    fn measures(&self) -> [(&'static str, &'static str, Option<f64>); 5] {
        [
            ("roc_auc", "roc auc", self.roc_auc),
            ("log_loss", "log-loss", self.log_loss),
            ("log_loss_base_rate", "log-loss, base rate", self.log_loss_base_rate),
            ("brier", "brier", self.brier),
            ("brier_base_rate", "brier, base rate", self.brier_base_rate),
        ]
    }
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table {} against interactions from {} on, k = {}", r.table, r.cutoff, r.k);
    let _ = writeln!(
        s,
        "users with relevant items: {} ({} have a list; a fallback answered {})",
        r.users, r.users_with_list, r.users_from_fallback
    );
    for (_, name, v) in r.measures() {
        match v {
            Some(v) => {
                let _ = writeln!(s, "  {name:<22}{v:.4}");
            }
            None => {
                let _ = writeln!(s, "  {name:<22}n/a");
            }
        }
    }
    for v in &r.variants {
        s.push_str(&render(&v.report));
    }
    s
}

pub fn parse_cutoff(text: &str) -> anyhow::Result<NaiveDateTime> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight"));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.naive_utc())
        .map_err(|_| anyhow::anyhow!("--cutoff: expected a date (2011-11-01) or an RFC 3339 time, got {text:?}"))
}

fn input(path: &Path, name: &str) -> anyhow::Result<Input> {
    Input::file(name, path)
        .ok_or_else(|| anyhow::anyhow!("{}: expected a .csv, .parquet or .arrow file", path.display()))
}

fn read_interactions(args: &EvalArgs) -> anyhow::Result<Vec<Row>> {
    let ids = [args.user_column.as_str(), args.item_column.as_str()];
    let batch = crate::worker::read_input_with_text(&input(&args.truth, "truth")?, &ids)?;
    let err = |e: recd_plugin_api::PluginError| anyhow::anyhow!("{}: {e}", args.truth.display());
    let users =
        ids_as_strings(column(&batch, "truth", &args.user_column).map_err(err)?, &args.user_column).map_err(err)?;
    let items =
        ids_as_strings(column(&batch, "truth", &args.item_column).map_err(err)?, &args.item_column).map_err(err)?;
    let times = times(&batch, &args.time_column).map_err(|e| anyhow::anyhow!("{}: {e}", args.truth.display()))?;
    let cancelled = match batch.column_by_name("cancelled") {
        Some(c) => booleans(c.as_ref(), "cancelled").map_err(err)?,
        None => vec![Some(false); batch.num_rows()],
    };
    Ok(users
        .into_iter()
        .zip(items)
        .zip(times)
        .zip(cancelled)
        .filter_map(|(((u, i), t), c)| match (u, i, t, c) {
            (Some(u), Some(i), Some(t), c) if c != Some(true) => Some((u, i, t)),
            _ => None,
        })
        .collect())
}

/// A time column as naive UTC times (any timestamp unit, or integer seconds).
fn times(batch: &RecordBatch, name: &str) -> Result<Vec<Option<NaiveDateTime>>, String> {
    let col = batch.column_by_name(name).ok_or_else(|| format!("no column `{name}`"))?;
    let secs = seconds(col.as_ref(), name).map_err(|e| e.to_string())?;
    Ok(secs
        .into_iter()
        .map(|s| {
            let s = s?;
            let whole = s.floor();
            chrono::DateTime::from_timestamp(whole as i64, ((s - whole) * 1e9) as u32).map(|t| t.naive_utc())
        })
        .collect())
}

fn read_categories(
    file: &Path,
    item_column: &str,
    category_column: &str,
    separator: Option<&str>,
) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let batch = crate::worker::read_input_with_text(&input(file, "categories")?, &[item_column, category_column])?;
    let err = |e: recd_plugin_api::PluginError| anyhow::anyhow!("{}: {e}", file.display());
    let items = ids_as_strings(column(&batch, "categories", item_column).map_err(err)?, item_column).map_err(err)?;
    let cats =
        ids_as_strings(column(&batch, "categories", category_column).map_err(err)?, category_column).map_err(err)?;
    Ok(recd_plugin_api::categories::collect(items.into_iter().zip(cats), separator))
}

/// Each item's embedding from FILE's COLUMN (a list of floats per row).
fn read_embeddings(file: &Path, item_column: &str, column_name: &str) -> anyhow::Result<HashMap<String, Vec<f32>>> {
    let batch = crate::worker::read_input_with_text(&input(file, "embeddings")?, &[item_column])?;
    let err = |e: recd_plugin_api::PluginError| anyhow::anyhow!("{}: {e}", file.display());
    let items = ids_as_strings(column(&batch, "embeddings", item_column).map_err(err)?, item_column).map_err(err)?;
    let col = column(&batch, "embeddings", column_name).map_err(err)?;
    let rows = float_lists(col, &format!("column `{column_name}`")).map_err(err)?;
    Ok(items
        .into_iter()
        .zip(rows)
        .filter_map(|(i, v)| Some((i?, v?.into_iter().map(|x| x as f32).collect())))
        .collect())
}

/// Each user's top k, read with ZREVRANGE over the socket, pipelined.
/// A user's answer: the first k items, and whether a fallback gave them.
struct Answer {
    items: Vec<String>,
    fallback: bool,
}

/// Each user's answer from `table`, read as an app reads it (`GET key WITHSOURCE`).
fn fetch_lists(socket: &Path, table: &str, users: &[&str], k: usize) -> anyhow::Result<Vec<Answer>> {
    let mut out = Vec::with_capacity(users.len());
    for chunk in users.chunks(1000) {
        let requests: Vec<Vec<Vec<u8>>> = chunk
            .iter()
            .map(|u| vec![b"GET".to_vec(), format!("{table}:{u}").into_bytes(), b"WITHSOURCE".to_vec()])
            .collect();
        for frame in crate::client::pipeline(socket, &requests)? {
            out.push(match frame {
                Frame::Bulk(json) => answer(&json).map_err(|e| anyhow::anyhow!("reading {table}: {e}"))?,
                Frame::Error(e) => anyhow::bail!("reading {table}: {e}"),
                _ => Answer { items: Vec::new(), fallback: false },
            });
        }
    }
    for a in &mut out {
        a.items.truncate(k.max(1));
    }
    Ok(out)
}

/// An answer from its `GET ... WITHSOURCE` JSON.
fn answer(json: &[u8]) -> Result<Answer, String> {
    #[derive(serde::Deserialize)]
    struct Sourced {
        fallback: bool,
        value: serde_json::Value,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        item: String,
    }
    let sourced: Sourced = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let items = match sourced.value {
        serde_json::Value::Object(_) => return Err("it holds hashes, not lists (a churn table: --churn)".into()),
        value => {
            let entries: Vec<Entry> = serde_json::from_value(value).map_err(|e| e.to_string())?;
            entries.into_iter().map(|e| e.item).collect()
        }
    };
    Ok(Answer { items, fallback: sourced.fallback })
}
