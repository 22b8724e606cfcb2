//! `recd init DIR --interactions FILE`: a working setup for one's own data in a new folder.
//! It reads the interactions (checking the mapped columns and times), trains a ranking
//! model on them, writes `recd.toml` and the jobs (popularity with its own `__default__`,
//! ranking falling back to it, diversity over ranking), validates them as `recd validate`
//! does, and prints the commands to serve, run, read and evaluate.
//!
//! Everything is built in a staging folder beside DIR and renamed to DIR once complete, so
//! a failure leaves nothing behind and DIR is never half-written; an existing DIR that is
//! not empty is refused (nothing is overwritten). A setup that then fails validation is
//! removed.

mod files;
mod source;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;

#[derive(clap::Args)]
pub struct InitArgs {
    /// New folder for the setup (must not exist, or be empty)
    pub dir: PathBuf,
    /// Interactions: CSV with a header row, Parquet or Arrow, read in place by the jobs;
    /// another delimited file (with --delimiter, --columns) is converted into DIR/data/
    #[arg(long, value_name = "FILE")]
    pub interactions: PathBuf,
    #[arg(long, default_value = "user_id")]
    pub user_column: String,
    #[arg(long, default_value = "item_id")]
    pub item_column: String,
    /// A timestamp (any unit, with or without a zone), ISO text, or epoch seconds or
    /// milliseconds
    #[arg(long, default_value = "ts")]
    pub time_column: String,
    /// Field separator of a delimited interactions file: one character, or `tab`
    #[arg(long)]
    pub delimiter: Option<String>,
    /// Column names of an interactions file without a header row, in order, comma-separated
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub columns: Option<Vec<String>>,
    /// Item metadata (CSV or Parquet) with the item id column and --category-column: the
    /// diversity job caps and spreads categories (default: it compares the model's item
    /// embeddings)
    #[arg(long, value_name = "FILE")]
    pub items: Option<PathBuf>,
    /// The item id column of --items (default: --item-column)
    #[arg(long)]
    pub items_id_column: Option<String>,
    #[arg(long, default_value = "category")]
    pub category_column: String,
    /// Users file (CSV or Parquet) keyed by --user-column, with --segment-column
    #[arg(long, value_name = "FILE", requires = "segment_column")]
    pub users: Option<PathBuf>,
    /// A segment per user (in --users, else in the interactions): popularity lists per
    /// segment, `__segment__:<value>`
    #[arg(long)]
    pub segment_column: Option<String>,
    /// Jobs and training read only interactions before this date (2024-03-01) or RFC 3339
    /// time; `recd eval` scores the lists on the rest
    #[arg(long)]
    pub cutoff: Option<String>,
    /// Zone of the jobs' daily schedule (IANA name)
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// List length of the popularity and ranking tables (diversity keeps half)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(2..=1000))]
    pub k: u16,
    /// Python with numpy, pandas, pyarrow and onnx for scripts/train_ranking.py (the
    /// checkout's .deps/pytools is put on its path when present)
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// The training script (default: scripts/train_ranking.py of the checkout this recd
    /// was built in)
    #[arg(long, value_name = "FILE")]
    pub trainer: Option<PathBuf>,
}

/// Builds the setup in a staging folder, validates it, and moves it to `args.dir`.
pub(super) fn init(args: &InitArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let dir = std::path::absolute(&args.dir)?;
    refuse_existing(&dir)?;
    let parent = dir.parent().ok_or_else(|| anyhow::anyhow!("{}: not a folder to create", dir.display()))?;
    std::fs::create_dir_all(parent)?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staging = parent.join(format!(".{name}.recd-init-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(Some(staging.clone()));
    std::fs::create_dir(&staging)
        .map_err(|e| anyhow::anyhow!("{}: cannot create the staging folder: {e}", staging.display()))?;

    let setup = build(args, config, &staging)?;
    refuse_existing(&dir)?;
    if dir.is_dir() {
        std::fs::remove_dir(&dir)?; // empty, checked just above
    }
    std::fs::rename(&staging, &dir)
        .map_err(|e| anyhow::anyhow!("moving {} to {}: {e}", staging.display(), dir.display()))?;
    // Checked where it will run, so that the paths shown are the real ones; a setup that
    // does not validate is removed again.
    let failed = RemoveOnDrop(Some(dir.clone()));
    println!("checking the jobs as `recd validate` does:");
    let written = Config::load(Some(&dir.join("recd.toml")))?;
    if super::validate::validate(&written, Vec::new())? != ExitCode::SUCCESS {
        anyhow::bail!("the written jobs do not validate (above); {} is removed again", dir.display());
    }
    failed.keep();
    print!("{}", files::next_steps(args, &setup, &dir));
    Ok(ExitCode::SUCCESS)
}

/// What `build` made, for the closing summary.
pub(super) struct Setup {
    /// The interactions file the jobs and the training read.
    pub jobs_data: source::Place,
    /// The whole data, which `recd eval` takes as the truth.
    pub truth: source::Place,
    pub summary: source::Summary,
    pub model: train::Model,
    pub jobs: Vec<&'static str>,
}

fn build(args: &InitArgs, config: &Config, staging: &Path) -> anyhow::Result<Setup> {
    let source = source::read(args)?;
    let summary = source.summary(args)?;
    println!("{}", summary.describe());
    source::check_side_files(args)?;
    let (jobs_data, truth) = source.place(staging)?;
    let model = train::train(args, &jobs_data.under(staging), &staging.join(files::MODEL_DIR))?;
    let jobs = files::write(args, config, staging, &jobs_data)?;
    Ok(Setup { jobs_data, truth, summary, model, jobs })
}

/// DIR may not exist yet or be an empty folder; anything else would be overwritten.
fn refuse_existing(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => anyhow::bail!("{}: {e} (recd init writes into a new folder)", dir.display()),
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => {
                anyhow::bail!("{} is not empty: recd init writes only into a new or empty folder", dir.display())
            }
        },
    }
}

/// A folder removed when this is dropped, unless kept: the staging folder (gone anyway
/// once renamed), and the new folder until its jobs validate.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
