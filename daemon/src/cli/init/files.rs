//! The files `recd init` writes: `recd.toml` (the shipped plugins and ONNX Runtime by
//! absolute path, everything else inside the new folder) and three jobs, popularity,
//! ranking and diversity, chained so one run of popularity refreshes them all.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::source::Place;
use super::{InitArgs, Setup};
use crate::config::{Config, EMBEDDED_DEFAULTS};

/// Where the trained model goes, relative to the new folder.
pub const MODEL_DIR: &str = "models/ranking";

/// Writes `recd.toml` and `jobs/*.toml` into `staging`; returns the job names in run order.
/// `parts`: the plugins folder and the ONNX Runtime library ([`shipped_parts`]).
pub fn write(
    args: &InitArgs,
    parts: &(PathBuf, PathBuf),
    staging: &Path,
    data: &Place,
) -> anyhow::Result<Vec<&'static str>> {
    let (plugins, onnxruntime) = parts;
    let settings = format!(
        "# Written by `recd init` (the interactions file is named in jobs/). Relative paths are\n\
         # resolved against this file's folder; the checkout's recd.toml describes every setting.\n\
         data_dir = \"var/data\"\n\
         socket = \"var/recd.sock\"\n\
         admin_socket = \"var/recd-admin.sock\"\n\
         jobs_dir = \"jobs\"\n\
         plugins_dir = {}\n\
         onnxruntime = {}\n",
        quoted(&plugins.display().to_string()),
        quoted(&onnxruntime.display().to_string()),
    );
    let written =
        |path: PathBuf, text: &str| std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()));
    written(staging.join("recd.toml"), &settings)?;
    std::fs::create_dir_all(staging.join("jobs"))?;
    let jobs =
        [("popularity", popularity(args, data)?), ("ranking", ranking(args, data)), ("diversity", diversity(args)?)];
    for (name, text) in &jobs {
        written(staging.join("jobs").join(format!("{name}.toml")), text)?;
    }
    Ok(jobs.iter().map(|(name, _)| *name).collect())
}

/// A TOML string literal.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn absolute(path: &Path) -> anyhow::Result<String> {
    Ok(quoted(&std::path::absolute(path)?.display().to_string()))
}

/// The plugins folder and ONNX Runtime library the setup names: the plugins beside this
/// recd's executable (a build puts them there), else its config's (the embedded defaults
/// resolve against the working directory), else an installed package's (`/usr/bin/recd`:
/// `/usr/lib/recd/`), else those of the checkout it was built in.
pub fn shipped_parts(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe()?;
    let mut plugins = exe.parent().into_iter().map(Path::to_path_buf).collect::<Vec<_>>();
    let mut libraries = vec![config.onnxruntime.clone()];
    plugins.push(config.plugins_dir.clone());
    if let (Some(prefix), Some(library)) = (exe.parent().and_then(Path::parent), config.onnxruntime.file_name()) {
        plugins.push(prefix.join("lib/recd/plugins"));
        libraries.push(prefix.join("lib/recd").join(library));
    }
    if let Some(Ok(checkout)) = exe.ancestors().nth(3).map(|root| Config::parse(EMBEDDED_DEFAULTS, "recd.toml", root)) {
        plugins.push(checkout.plugins_dir);
        libraries.push(checkout.onnxruntime);
    }
    let tried = |paths: &[PathBuf]| paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    let found = plugins.iter().find(|p| p.join("librecd_ranking.so").is_file()).ok_or_else(|| {
        anyhow::anyhow!("no librecd_ranking.so in {} (scripts/setup.sh builds the plugins)", tried(&plugins))
    })?;
    let library = libraries.iter().find(|o| o.is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "ONNX Runtime is not at {} (scripts/setup.sh installs it; ORT_DYLIB_PATH names another)",
            tried(&libraries)
        )
    })?;
    Ok((found.clone(), library.clone()))
}

fn columns(args: &InitArgs) -> String {
    format!("user_column = {}\nitem_column = {}\n", quoted(&args.user_column), quoted(&args.item_column))
}

fn popularity(args: &InitArgs, data: &Place) -> anyhow::Result<String> {
    let mut s = String::from(
        "# Time-decayed popularity (recent interactions count more): each user's list without\n\
         # what they had, `__segment__:<segment>` lists if a segment is set, and `__default__`\n\
         # for anyone the data does not know (this table's own fallback).\n\
         description = \"time-decayed popularity, for users without a ranking list and anyone new\"\n\
         plugin = \"cold-start\"\n\
         schedule = \"0 3 * * *\"         # daily at 03:00 in the zone below; ranking and diversity follow\n",
    );
    let _ = writeln!(s, "timezone = {}", quoted(&args.timezone));
    let _ = writeln!(s, "fallback = [\"popularity\"]");
    let _ = writeln!(s, "known_items = {}", quoted(&format!("interactions.{}", args.item_column)));
    let _ = writeln!(s, "max_items_per_user = {}\n\n[inputs]", args.k);
    let _ = writeln!(s, "interactions = {}", quoted(&data.in_job()));
    if let Some(users) = &args.users {
        let _ = writeln!(s, "users = {}", absolute(users)?);
    }
    let _ = writeln!(s, "\n[params]\nk = {}\nhalf_life_days = 30", args.k);
    s += &columns(args);
    let _ = writeln!(s, "time_column = {}", quoted(&args.time_column));
    if let Some(segment) = &args.segment_column {
        let _ = writeln!(s, "segment_column = {}", quoted(segment));
    }
    Ok(s)
}

fn ranking(args: &InitArgs, data: &Place) -> String {
    let mut s = format!(
        "# The trained model's top {k} unseen items per user it knows ({MODEL_DIR}, chosen by\n\
         # validation); anyone else gets their popularity list, or its __default__.\n\
         description = \"the ranking model's top {k} unseen items per user\"\n\
         plugin = \"ranking\"\n\
         after = [\"popularity\"]\n\
         model = \"{MODEL_DIR}/mf.onnx\"\n\
         known_users = \"users.user_id\"\n\
         known_items = \"items.item_id\"\n\
         max_items_per_user = {k}\n\
         fallback = [\"popularity\"]\n\n\
         [model_inputs]\nuser = \"user\"\nitem = \"item\"\n\n\
         [inputs]\n",
        k = args.k
    );
    let _ = writeln!(s, "interactions = {}", quoted(&data.in_job()));
    let _ = writeln!(s, "users = \"{MODEL_DIR}/users.csv\"\nitems = \"{MODEL_DIR}/items.csv\"");
    let _ = writeln!(s, "\n[params]\nk = {}", args.k);
    s + &columns(args)
}

/// Diversity keeps the better half of each ranking list, re-ranked by maximal marginal
/// relevance: by category with `--items`, else by the model's item embeddings.
fn diversity(args: &InitArgs) -> anyhow::Result<String> {
    let k = args.k.div_ceil(2);
    let mut s = format!(
        "# Each ranking list re-ranked for variety (maximal marginal relevance), top {k}.\n\
         description = \"ranking's lists re-ranked for variety, top {k}\"\n\
         plugin = \"diversity\"\n\
         after = [\"ranking\"]\n\
         max_items_per_user = {k}\n\
         fallback = [\"popularity\"]\n\n\
         [inputs]\n\
         candidates = \"table:ranking\"\n"
    );
    match &args.items {
        Some(items) => {
            let id = args.items_id_column.as_deref().unwrap_or(&args.item_column);
            let _ =
                writeln!(s, "items = {}\n\n[params]\nk = {k}\nlambda = 0.7\nmax_per_category = 2", absolute(items)?);
            let _ = writeln!(s, "item_column = {}\ncategory_column = {}", quoted(id), quoted(&args.category_column));
            if let Some(separator) = &args.category_separator {
                let _ = writeln!(s, "category_separator = {}", quoted(separator));
            }
        }
        None => {
            let _ = writeln!(s, "embeddings = \"{MODEL_DIR}/item_factors.parquet\"  # the model's item vectors");
            let _ = writeln!(s, "\n[params]\nk = {k}\nlambda = 0.7\nsimilarity = \"embedding\"");
        }
    }
    Ok(s)
}

/// What to type next, printed once the folder is in place.
pub fn next_steps(args: &InitArgs, setup: &Setup, dir: &Path) -> String {
    let recd = std::env::current_exe().map_or_else(|_| "recd".into(), |p| p.display().to_string());
    let config = dir.join("recd.toml");
    let cmd = format!("{} --config {}", sh(&recd), sh(&config.display().to_string()));
    let user = &sh(&setup.model.sample_user);
    let ranking_key = sh(&format!("ranking:{}", setup.model.sample_user));
    let mut s = format!("\nwrote {}: recd.toml, jobs/{{{}}}.toml, {MODEL_DIR}/", dir.display(), setup.jobs.join(","));
    if let Place::Written(rel) = &setup.jobs_data {
        let _ = write!(s, ", {rel}");
    }
    let _ = writeln!(
        s,
        "\nmodel: {} users, {} items{}",
        setup.model.users,
        setup.model.items,
        setup.model.ndcg.map_or(String::new(), |n| format!(", nDCG@10 {n:.4} on its validation windows"))
    );
    let _ = writeln!(s, "\nserve, run and read:");
    let _ = writeln!(s, "  {cmd} serve &");
    let _ = writeln!(s, "  {cmd} run popularity       # ranking, then diversity, follow it");
    let _ = writeln!(s, "  {cmd} get ranking {user}");
    let _ = writeln!(
        s,
        "  redis-cli -s {} ZREVRANGE {ranking_key} 0 9 WITHSCORES",
        sh(&dir.join("var/recd.sock").display().to_string())
    );
    if let Some((_, cutoff)) = &setup.summary.past {
        let _ = writeln!(s, "\nevaluate on what happened from the cut-off on:");
        for table in ["ranking", "popularity"] {
            let _ = writeln!(
                s,
                "  {cmd} eval {table} --truth {} --cutoff {} --k {} --user-column {} --item-column {} --time-column {}",
                sh(&setup.truth.under(dir).display().to_string()),
                sh(cutoff),
                args.k,
                sh(&args.user_column),
                sh(&args.item_column),
                sh(&args.time_column),
            );
        }
    }
    s
}

/// `text` as one shell word: as is when it is plainly safe, else in single quotes.
fn sh(text: &str) -> String {
    let plain = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    match plain {
        true => text.to_string(),
        false => format!("'{}'", text.replace('\'', r"'\''")),
    }
}

#[cfg(test)]
mod tests {
    use super::sh;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(sh("/tmp/a/recd.toml"), "/tmp/a/recd.toml");
        assert_eq!(sh("my data/x.csv"), "'my data/x.csv'");
        assert_eq!(sh("it's"), r"'it'\''s'");
        assert_eq!(sh("ranking:__segment__:United Kingdom"), "'ranking:__segment__:United Kingdom'");
    }
}
