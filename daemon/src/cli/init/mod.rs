//! `recd init DIR --interactions FILE`: a working setup for one's own data in a new folder.
//! It reads the interactions (checking the mapped columns and times), trains a ranking
//! model on them, writes `recd.toml` and the jobs (popularity with its own `__default__`,
//! ranking falling back to it, diversity over ranking), validates them as `recd validate`
//! does, and prints the commands to serve, run, read and evaluate.
//!
//! Everything is built in a staging folder beside DIR and moved into DIR once complete (one
//! rename for a new DIR; entry by entry into an existing empty one), and taken out again if
//! anything fails after that, validation included: a failure leaves nothing behind. An
//! existing DIR that is not empty is refused (nothing is overwritten). The plugins, ONNX Runtime, the trainer and the zone are checked first.

mod files;
mod source;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

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
    /// A timestamp (any unit, with or without a zone), epoch seconds or milliseconds, or
    /// in a CSV ISO 8601 text
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
    /// Splits one --category-column cell into several categories (`|` for `Drama|Comedy`);
    /// an item on several rows of --items has every row's category anyway
    #[arg(long, requires = "items", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub category_separator: Option<String>,
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
    /// Python with numpy, pandas, pyarrow and onnx for scripts/train_ranking.py (with the
    /// default, the checkout's .deps/pytools goes on its path when present)
    #[arg(long, default_value = train::DEFAULT_PYTHON)]
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
    // What can be checked in a moment is, before minutes of reading and training.
    let tools = Tools { parts: files::shipped_parts(config)?, trainer: train::trainer(args)? };
    args.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
        anyhow::anyhow!("--timezone {}: not an IANA time zone name (e.g. Europe/Berlin)", args.timezone)
    })?;
    let parent = dir.parent().ok_or_else(|| anyhow::anyhow!("{}: not a folder to create", dir.display()))?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staging = parent.join(format!(".{name}.recd-init-{}", std::process::id()));
    std::fs::create_dir(&staging).with_context(|| format!("creating the staging folder {}", staging.display()))?;
    let _cleanup = RemoveOnDrop(staging.clone());

    let setup = build(args, &tools, &staging)?;
    let placed = place(&staging, &dir)?;
    // Checked where it will run, so that the paths shown are the real ones; a setup that
    // does not validate is taken out again.
    println!("checking the jobs as `recd validate` does:");
    let written = Config::load(Some(&dir.join("recd.toml")))?;
    if super::validate::validate(&written, Vec::new())? != ExitCode::SUCCESS {
        anyhow::bail!("the written jobs do not validate (above); nothing is left in {}", dir.display());
    }
    placed.keep();
    print!("{}", files::next_steps(args, &setup, &dir));
    Ok(ExitCode::SUCCESS)
}

/// What the setup runs with, found before anything is written.
pub(super) struct Tools {
    /// The plugins folder and the ONNX Runtime library.
    pub parts: (PathBuf, PathBuf),
    pub trainer: PathBuf,
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

fn build(args: &InitArgs, tools: &Tools, staging: &Path) -> anyhow::Result<Setup> {
    let source = source::read(args)?;
    let summary = source.summary(args)?;
    println!("{}", summary.describe());
    source::check_side_files(args)?;
    let (jobs_data, truth) = source.place(staging)?;
    let model = train::train(args, &tools.trainer, &jobs_data.under(staging), &staging.join(files::MODEL_DIR))?;
    let jobs = files::write(args, &tools.parts, staging, &jobs_data)?;
    Ok(Setup { jobs_data, truth, summary, model, jobs })
}

/// The setup moved into DIR: taken out again when dropped, unless kept (after its jobs
/// validate), so that no failure leaves part of it there.
struct Placed {
    dir: PathBuf,
    /// DIR was created by the rename (else it existed, empty, and stays).
    renamed: bool,
    /// The entries moved into an existing DIR so far.
    moved: Vec<PathBuf>,
    kept: bool,
}

impl Placed {
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let remove = |path: &Path| match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => drop(std::fs::remove_dir_all(path)),
            _ => drop(std::fs::remove_file(path)),
        };
        match self.renamed {
            true => remove(&self.dir),
            false => self.moved.iter().for_each(|p| remove(p)),
        }
    }
}

/// Moves the staged setup into `dir`: one rename when `dir` does not exist (it appears
/// complete), else each entry into the empty folder, which stays the same folder (it may
/// be the shell's working one).
fn place(staging: &Path, dir: &Path) -> anyhow::Result<Placed> {
    refuse_existing(dir)?;
    let moving = |from: &Path, to: &Path| {
        std::fs::rename(from, to).with_context(|| format!("moving {} to {}", from.display(), to.display()))
    };
    let mut placed = Placed { dir: dir.to_path_buf(), renamed: !dir.exists(), moved: Vec::new(), kept: false };
    if placed.renamed {
        moving(staging, dir)?;
        return Ok(placed);
    }
    for entry in std::fs::read_dir(staging)? {
        let from = entry?.path();
        let to = dir.join(from.file_name().expect("an entry's name"));
        moving(&from, &to)?;
        placed.moved.push(to);
    }
    Ok(placed)
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

/// The staging folder, removed however `init` ends (once renamed it no longer exists).
/// An interrupt (Ctrl-C) skips this: the `.DIR.recd-init-PID` folder is then left behind.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
