//! Trains the setup's ranking model with `scripts/train_ranking.py`, which chooses its
//! family (time-decayed popularity, ALS, EASE^R, EASE^R + popularity) on validation
//! windows cut from the data it reads.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::InitArgs;

/// The trained model, as its `metrics.json` and vocabulary describe it.
pub struct Model {
    pub users: u64,
    pub items: u64,
    pub ndcg: Option<f64>,
    /// A user the model knows, for the printed example commands.
    pub sample_user: String,
}

pub fn train(args: &InitArgs, script: &Path, data: &Path, out: &Path) -> anyhow::Result<Model> {
    println!("training the ranking model with {} (its output follows on stderr)", script.display());
    let mut cmd = Command::new(&args.python);
    cmd.arg(script).arg("--data").arg(data);
    cmd.args(["--user-column", &args.user_column, "--item-column", &args.item_column]);
    cmd.args(["--time-column", &args.time_column]).arg("--out").arg(out);
    // The checkout's packages are built for its python3; another interpreter (a venv, say)
    // brings its own. After PYTHONPATH's own entries, which come first.
    if let (Some(tools), true) = (pytools(script), args.python == DEFAULT_PYTHON) {
        let mut path = std::env::var_os("PYTHONPATH").unwrap_or_default();
        if !path.is_empty() {
            path.push(":");
        }
        path.push(tools);
        cmd.env("PYTHONPATH", path);
    }
    // Its progress goes to stderr: stdout stays recd init's own summary.
    cmd.stdout(std::io::stderr());
    let status = cmd.status().map_err(|e| anyhow::anyhow!("{}: {e} (--python names the interpreter)", args.python))?;
    anyhow::ensure!(status.success(), "training failed ({status}); the trainer's message is above");
    read_model(out)
}

/// `--python`'s default.
pub const DEFAULT_PYTHON: &str = "python3";

/// `--trainer`, else `scripts/train_ranking.py` of the checkout this `recd` was built in
/// (it runs from `target/release/`), else the one an installed package ships beside it
/// (`/usr/bin/recd`: `/usr/share/recd/scripts/train_ranking.py`).
pub fn trainer(args: &InitArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.trainer {
        anyhow::ensure!(path.is_file(), "--trainer {}: no such file", path.display());
        return Ok(std::path::absolute(path)?);
    }
    let exe = std::env::current_exe()?;
    let checkout = exe.ancestors().skip(1).take(3).map(|dir| dir.join("scripts/train_ranking.py"));
    let package = exe.parent().and_then(Path::parent).map(|prefix| prefix.join("share/recd/scripts/train_ranking.py"));
    checkout.chain(package).find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "scripts/train_ranking.py is neither in the checkout around {} nor in the package's share/recd/scripts: give --trainer FILE",
            exe.display()
        )
    })
}

/// The checkout's `.deps/pytools` (where `scripts/setup.sh --tests` installs the training
/// packages), if there is one beside the script's folder.
fn pytools(script: &Path) -> Option<PathBuf> {
    let tools = script.parent()?.parent()?.join(".deps/pytools");
    tools.is_dir().then_some(tools)
}

fn read_model(out: &Path) -> anyhow::Result<Model> {
    let text = std::fs::read_to_string(out.join("metrics.json"))
        .map_err(|e| anyhow::anyhow!("{}: {e} (the trainer wrote no metrics)", out.join("metrics.json").display()))?;
    let metrics: serde_json::Value = serde_json::from_str(&text)?;
    let vocab = std::fs::read_to_string(out.join("users.csv"))?;
    // users.csv is `user_id,index`; ids with commas are quoted by the trainer's CSV writer.
    let sample_user = vocab
        .lines()
        .nth(1)
        .and_then(|line| line.rsplit_once(','))
        .map(|(id, _)| id.trim_matches('"').to_string())
        .ok_or_else(|| anyhow::anyhow!("{}: no users", out.join("users.csv").display()))?;
    Ok(Model {
        users: metrics["users"].as_u64().unwrap_or(0),
        items: metrics["items"].as_u64().unwrap_or(0),
        ndcg: metrics["validation_ndcg@10"].as_f64(),
        sample_user,
    })
}
