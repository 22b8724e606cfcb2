//! The interactions `recd init` starts from: read as the jobs will read them (or, for a
//! delimited file they cannot read, with the delimiter and names given), the mapped
//! columns checked, and placed where the jobs, the training and `recd eval` find them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{BooleanArray, RecordBatch};
use recd_plugin_api::columns::{column, ids_as_strings, seconds};

use super::InitArgs;
use crate::job::Input;

/// Where a data file of the setup is: the user's own, read in place, or one `recd init`
/// wrote into the new folder (the path relative to it).
#[derive(Clone)]
pub enum Place {
    Original(PathBuf),
    Written(&'static str),
}

impl Place {
    /// The file's path once the setup is in `dir`.
    pub fn under(&self, dir: &Path) -> PathBuf {
        match self {
            Place::Original(path) => path.clone(),
            Place::Written(rel) => dir.join(rel),
        }
    }

    /// The path as a job file names it (relative paths resolve against `recd.toml`'s folder).
    pub fn in_job(&self) -> String {
        match self {
            Place::Original(path) => path.display().to_string(),
            Place::Written(rel) => rel.to_string(),
        }
    }
}

pub struct Source {
    path: PathBuf,
    batch: RecordBatch,
    /// Whether the jobs can read the file as it is (a CSV with a header row, Parquet, Arrow).
    in_place: bool,
    /// Each row's time in epoch seconds (None: empty).
    times: Vec<Option<f64>>,
    /// `--cutoff` in epoch seconds.
    cutoff: Option<f64>,
}

/// What the data holds, printed before the training starts.
pub struct Summary {
    pub file: PathBuf,
    pub rows: usize,
    pub users: usize,
    pub items: usize,
    pub first: String,
    pub last: String,
    /// Rows before `--cutoff`, with the cut-off as given.
    pub past: Option<(usize, String)>,
}

impl Summary {
    pub fn describe(&self) -> String {
        let mut s = format!(
            "read {}: {} interactions, {} users, {} items, from {} to {}",
            self.file.display(),
            self.rows,
            self.users,
            self.items,
            self.first,
            self.last
        );
        if let Some((past, cutoff)) = &self.past {
            s += &format!("\n  {past} before the cut-off {cutoff} (what the jobs and the training read)");
        }
        s
    }
}

/// Reads `--interactions` and checks the mapped columns and the cut-off against it.
pub fn read(args: &InitArgs) -> anyhow::Result<Source> {
    let path = std::path::absolute(&args.interactions)?;
    let shown = path.display().to_string();
    let dialect = args.delimiter.is_some() || args.columns.is_some();
    let (batch, in_place) = match Input::file("interactions", &path) {
        Some(input) if !dialect => {
            let ids = [args.user_column.as_str(), args.item_column.as_str()];
            (crate::worker::read_input_with_text(&input, &ids)?, true)
        }
        None if !dialect => anyhow::bail!(
            "{shown}: recd reads .csv (comma-separated, with a header row), .parquet and .arrow files; for \
             another delimited file give --delimiter (e.g. `--delimiter tab`) and, without a header row, \
             --columns NAMES"
        ),
        _ => {
            let delimiter = delimiter(args.delimiter.as_deref().unwrap_or(","))?;
            let batch = crate::worker::read_delimited(&path, delimiter, args.columns.as_deref())
                .map_err(|e| anyhow::anyhow!("{shown}: {e:#}"))?;
            (batch, false)
        }
    };
    let mut mapped = vec![
        ("--user-column", args.user_column.as_str()),
        ("--item-column", args.item_column.as_str()),
        ("--time-column", args.time_column.as_str()),
    ];
    if let (Some(segment), None) = (&args.segment_column, &args.users) {
        mapped.push(("--segment-column", segment.as_str()));
    }
    require(&batch, &shown, &mapped)?;
    let times = seconds(batch.column_by_name(&args.time_column).expect("checked").as_ref(), &args.time_column)
        .map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
    anyhow::ensure!(times.iter().any(Option::is_some), "{shown}: column {:?} has no times", args.time_column);
    let cutoff = match &args.cutoff {
        None => None,
        Some(text) => Some(crate::eval::parse_cutoff(text)?.and_utc().timestamp() as f64),
    };
    Ok(Source { path, batch, in_place, times, cutoff })
}

/// `tab`, `\t` or a single ASCII character.
fn delimiter(text: &str) -> anyhow::Result<u8> {
    match text {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        _ if text.len() == 1 && text.is_ascii() => Ok(text.as_bytes()[0]),
        _ => anyhow::bail!("--delimiter {text:?}: expected one ASCII character or `tab`"),
    }
}

impl Source {
    pub fn summary(&self, args: &InitArgs) -> anyhow::Result<Summary> {
        let distinct = |name: &str| -> anyhow::Result<usize> {
            let col = column(&self.batch, "interactions", name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let ids = ids_as_strings(col, name).map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))?;
            Ok(ids.into_iter().flatten().collect::<HashSet<_>>().len())
        };
        let known = self.times.iter().flatten();
        let (first, last) = known.fold((f64::MAX, f64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        let past = match (self.cutoff, &args.cutoff) {
            (Some(cutoff), Some(text)) => {
                let before = self.before(cutoff);
                let n = before.true_count();
                anyhow::ensure!(
                    n > 0,
                    "--cutoff {text}: no interaction is before it (the data runs from {} to {})",
                    when(first),
                    when(last)
                );
                anyhow::ensure!(
                    n < self.batch.num_rows(),
                    "--cutoff {text}: every interaction is before it, none is left for `recd eval` to score \
                     the lists on (the data runs from {} to {})",
                    when(first),
                    when(last)
                );
                Some((n, text.clone()))
            }
            _ => None,
        };
        Ok(Summary {
            file: self.path.clone(),
            rows: self.batch.num_rows(),
            users: distinct(&args.user_column)?,
            items: distinct(&args.item_column)?,
            first: when(first),
            last: when(last),
            past,
        })
    }

    /// Places the data for the setup in `staging`: the file the jobs and the training read
    /// (the past, with a cut-off) and the whole data for `recd eval`. A file the jobs can
    /// read stays where it is; the rest is written as Parquet into `data/`.
    pub fn place(&self, staging: &Path) -> anyhow::Result<(Place, Place)> {
        let whole = match self.in_place {
            true => Place::Original(self.path.clone()),
            false => self.write(&self.batch, staging, "data/interactions.parquet")?,
        };
        let jobs = match self.cutoff {
            None => whole.clone(),
            Some(cutoff) => {
                let past = arrow_select::filter::filter_record_batch(&self.batch, &self.before(cutoff))?;
                self.write(&past, staging, "data/past.parquet")?
            }
        };
        Ok((jobs, whole))
    }

    /// Rows with a time before `cutoff` (a row without a time is not).
    fn before(&self, cutoff: f64) -> BooleanArray {
        self.times.iter().map(|t| Some(t.is_some_and(|t| t < cutoff))).collect()
    }

    fn write(&self, batch: &RecordBatch, staging: &Path, rel: &'static str) -> anyhow::Result<Place> {
        let path = staging.join(rel);
        std::fs::create_dir_all(path.parent().expect("data/"))?;
        let file = std::fs::File::create(&path)?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, Arc::clone(&batch.schema()), None)?;
        writer.write(batch)?;
        writer.close()?;
        Ok(Place::Written(rel))
    }
}

fn when(secs: f64) -> String {
    chrono::DateTime::from_timestamp(secs.floor() as i64, 0)
        .map_or_else(|| format!("{secs} s"), |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}

/// `--items` and `--users` are read by the jobs as they are: check they can be, and that
/// they have the columns the jobs will name.
pub fn check_side_files(args: &InitArgs) -> anyhow::Result<()> {
    let item_id = args.items_id_column.as_deref().unwrap_or(&args.item_column);
    if let Some(items) = &args.items {
        check_columns(
            items,
            "--items",
            &[("--items-id-column", item_id), ("--category-column", &args.category_column)],
        )?;
    }
    if let (Some(users), Some(segment)) = (&args.users, &args.segment_column) {
        check_columns(users, "--users", &[("--user-column", &args.user_column), ("--segment-column", segment)])?;
    }
    Ok(())
}

fn check_columns(path: &Path, flag: &str, columns: &[(&str, &str)]) -> anyhow::Result<()> {
    let input = Input::file(flag.trim_start_matches('-'), path).ok_or_else(|| {
        anyhow::anyhow!("{flag} {}: expected a .csv (with a header row), .parquet or .arrow file", path.display())
    })?;
    let ids: Vec<&str> = columns.iter().take(1).map(|(_, name)| *name).collect();
    let batch = crate::worker::read_input_with_text(&input, &ids)?;
    require(&batch, &format!("{flag} {}", path.display()), columns)
}

/// Fails unless `batch` (from `file`, as the message names it) has each column, naming the
/// flag that asked for it and the columns it does have.
fn require(batch: &RecordBatch, file: &str, columns: &[(&str, &str)]) -> anyhow::Result<()> {
    for (flag, name) in columns {
        anyhow::ensure!(
            batch.schema().column_with_name(name).is_some(),
            "{flag} {name}: {file} has no column {name:?} (it has: {})",
            batch.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}
