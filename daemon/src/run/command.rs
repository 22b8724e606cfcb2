//! A command job's run: its program runs as a child in a process group of its own, in the
//! folder of recd.toml; its output goes to the log line by line and its last lines into
//! the run history. With `produces`, the folder it wrote becomes the registry model's next
//! version once it exits 0 (see [`crate::models::publish`]); a command that fails, times
//! out or is cancelled publishes nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use rustix::process::Signal;

use super::process::{Source, describe, forward};
use super::{Published, RemoveOnDrop, RunControl, RunError, RunReport, check_files};
use crate::child::{kill_group, signal_group, wait_unreaped};
use crate::config::Config;
use crate::job::{CommandSpec, Input, Job};
use crate::models;
use crate::store::Lineage;

/// Lines of a command's output kept for the run history.
pub const OUTPUT_TAIL_LINES: usize = 20;

pub fn execute_command(
    job: &Job,
    command: &CommandSpec,
    run_id: u64,
    config: &Config,
    control: &Arc<RunControl>,
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    // Held until the run ends: retention keeps the pinned versions' files.
    let (original, (job, used, _pins)) =
        (job, models::pin(job, &config.data_dir).map_err(|e| RunError::Failed(e.to_string()))?);
    check_files(&job, config.max_input_bytes)?;
    let hashing = super::hash_inputs_beside(&original.inputs, &job.inputs, Default::default(), &used);
    let inputs = control.wait_beside(job.policy.timeout, &hashing);
    // Stopped meanwhile (a cancel, or the timeout): the command does not start.
    let inputs = match (control.stop_reason(), inputs) {
        (Some(stop), _) => return Err(stop),
        (None, Some(inputs)) => inputs,
        (None, None) => return Err(RunError::Failed("hashing the inputs ended without an outcome".into())),
    };
    let command_line = serde_json::to_string(&(&command.argv, &command.env)).expect("a command line serialises");
    let params_sha256 = crate::lineage::sha256_text(&command_line);
    control.set_inputs(inputs.clone(), params_sha256.clone());
    // The program as the job was checked with: the daemon's PATH, its file trusted as a
    // plugin's is (a job's `[env]` PATH does not pick another one).
    let program = crate::job::find_program(&command.argv[0])
        .and_then(|p| crate::trust::check_trust(&p).map(|_| p))
        .map_err(|m| RunError::Failed(format!("command: {m}")))?;
    control.set_models(used.iter().map(|m| format!("{}@{}", m.name, m.version)).collect());
    let output = command.produces.as_ref().map(|name| models::staging_dir(&config.data_dir, name, run_id));
    if let Some(dir) = &output {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| RunError::Failed(format!("cannot create the output folder {}: {e}", dir.display())))?;
    }
    let _cleanup = output.clone().map(RemoveOnDrop);
    let mut argv = substitute(&command.argv, output.as_deref(), &job.inputs);
    argv[0] = program.display().to_string();
    // stdout and stderr share one pipe, so their lines keep the order they were written in.
    let (reader, writer) = std::io::pipe().map_err(|e| RunError::Failed(format!("cannot create a pipe: {e}")))?;
    let writer_too = writer.try_clone().map_err(|e| RunError::Failed(format!("cannot create a pipe: {e}")))?;
    let mut cmd = build(&argv, &job, command, run_id, output.as_deref(), &config.base_dir);
    cmd.stdout(writer).stderr(writer_too);
    let spawned = cmd.spawn();
    // Our copies of the write end go, or the reader would never see the end of the output.
    drop(cmd);
    let mut child = spawned.map_err(|e| RunError::Failed(format!("cannot start command {}: {e}", argv[0])))?;
    let group = child.id();
    let forwarded = forward(reader, Source::Command, &job.name, run_id, OUTPUT_TAIL_LINES);
    let watchdog = {
        let (control, timeout) = (Arc::clone(control), job.policy.timeout);
        std::thread::spawn(move || {
            control.watch_with(timeout, || signal_group(group, Signal::TERM), || signal_group(group, Signal::KILL))
        })
    };
    // What the command left running in its group ends with it: a run is over when its
    // command exits, and a straggler would hold the output pipes open. Killed before the
    // command is reaped, and the watchdog stopped before too: until then the group's id
    // stays taken, and no other group can have it.
    wait_unreaped(group);
    kill_group(group);
    control.finish();
    let _ = watchdog.join();
    let status = child.wait().map_err(|e| RunError::Failed(format!("waiting for the command: {e}")));
    // A process that left the group (setsid, a daemonising helper) can hold the pipe open:
    // the run does not wait for it longer than a cancel would.
    let output_tail = forwarded.tail(super::control::CANCEL_GRACE).join("\n");
    control.set_output(output_tail.clone());
    let status = status?;
    if let Some(stop) = control.stop_reason() {
        return Err(stop);
    }
    if !status.success() {
        let last = output_tail.lines().last().map(|l| format!("; last output: {l}")).unwrap_or_default();
        return Err(RunError::Failed(format!("command {} ended with {}{last}", command.argv[0], describe(status))));
    }
    let published = match (&command.produces, &output) {
        (Some(name), Some(dir)) => {
            let publish = models::Publish {
                job: &job.name,
                run_id,
                model_file: command.model_file.as_deref(),
                max_bytes: config.max_input_bytes,
                keep: config.retention.count,
                gate: command.gate.as_ref(),
                lineage: Lineage {
                    models: used.iter().map(|m| format!("{}@{}", m.name, m.version)).collect(),
                    inputs,
                    params_sha256: Some(params_sha256),
                    recd_version: env!("CARGO_PKG_VERSION").into(),
                    ..Lineage::default()
                },
            };
            let version = models::publish(&config.data_dir, name, dir, &publish)
                .map_err(|e| RunError::Failed(format!("registry model `{name}`: {e}")))?;
            Published::Model(version)
        }
        _ => Published::Nothing,
    };
    Ok(RunReport {
        job: job.name.clone(),
        run_id,
        table: String::new(),
        published,
        provider: "none".into(),
        seconds: started.elapsed().as_secs_f64(),
        stats: Default::default(),
        stages: Default::default(),
        warnings: Vec::new(),
        models_used: used,
        models_held: Vec::new(),
    })
}

/// The command, its arguments with placeholders filled, its environment: the daemon's,
/// then `RECD_JOB`, `RECD_RUN_ID`, `RECD_OUTPUT` (with `produces`) and
/// `RECD_INPUT_<NAME>` for each input, then the job's `[env]`.
fn build(argv: &[String], job: &Job, spec: &CommandSpec, run_id: u64, output: Option<&Path>, base: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(base)
        .stdin(Stdio::null())
        .process_group(0)
        .env("RECD_JOB", &job.name)
        .env("RECD_RUN_ID", run_id.to_string());
    if let Some(dir) = output {
        cmd.env("RECD_OUTPUT", dir);
    }
    for input in &job.inputs {
        cmd.env(crate::job::input_env_var(&input.name), &input.path);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// `{output}` and `{inputs.<name>}` replaced (the job's validation accepted only these), in
/// one pass: a path that holds braces itself is not read again.
fn substitute(argv: &[String], output: Option<&Path>, inputs: &[Input]) -> Vec<String> {
    let value = |name: &str| -> Option<String> {
        match name.strip_prefix("inputs.") {
            Some(input) => inputs.iter().find(|i| i.name == input).map(|i| i.path.display().to_string()),
            None if name == "output" => output.map(|d| d.display().to_string()),
            None => None,
        }
    };
    argv.iter()
        .map(|arg| {
            let mut out = String::with_capacity(arg.len());
            let mut rest = arg.as_str();
            for name in crate::job::placeholders(arg) {
                let token = format!("{{{name}}}");
                let at = rest.find(&token).expect("a placeholder is in its argument");
                out.push_str(&rest[..at]);
                match value(name) {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&token),
                }
                rest = &rest[at + token.len()..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn placeholders_become_the_output_folder_and_input_paths() {
        let inputs = vec![Input {
            name: "interactions".into(),
            path: PathBuf::from("/d/i.parquet"),
            format: crate::job::InputFormat::Parquet,
            registry: None,
        }];
        let argv: Vec<String> =
            ["train", "--data={inputs.interactions}", "--out", "{output}/m", "{x}"].map(String::from).into();
        assert_eq!(
            substitute(&argv, Some(Path::new("/data/models/m/.staging-3")), &inputs),
            ["train", "--data=/d/i.parquet", "--out", "/data/models/m/.staging-3/m", "{x}"]
        );
        assert_eq!(crate::job::input_env_var("item-factors"), "RECD_INPUT_ITEM_FACTORS");
    }
}
