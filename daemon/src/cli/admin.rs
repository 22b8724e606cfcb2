//! What the CLI does with a daemon's replies: print them (an error reply exits non-zero),
//! `recd run`'s progress bar, and `recd get`'s numbered list.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::client;
use crate::resp::Frame;

/// `recd run JOB`: waits for the run; in a terminal, draws a progress bar from the
/// plugin's progress reports (polled on a second connection).
pub(super) fn run(admin: &Path, job: &str) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bar = std::io::stderr().is_terminal().then(|| {
        let (admin, job, done) = (admin.to_path_buf(), job.to_string(), Arc::clone(&done));
        std::thread::spawn(move || progress_bar(&admin, &job, &done))
    });
    let reply = client::call(admin, &[b"RUN", job.as_bytes()]);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(bar) = bar {
        let _ = bar.join();
    }
    print_reply(reply?)
}

pub(super) fn progress_bar(admin: &Path, job: &str, done: &std::sync::atomic::AtomicBool) {
    let bar = indicatif::ProgressBar::new(0).with_message(job.to_string());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(Frame::Array(v)) = client::call(admin, &[b"PROGRESS", job.as_bytes()])
            && let [Frame::Integer(d), Frame::Integer(t)] = v.as_slice()
        {
            bar.set_length(*t as u64);
            bar.set_position(*d as u64);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
}

pub(super) fn print_reply(frame: Frame) -> anyhow::Result<ExitCode> {
    match frame {
        Frame::Error(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
        Frame::Simple(s) => {
            println!("{s}");
            Ok(ExitCode::SUCCESS)
        }
        Frame::Bulk(b) => {
            // Texts end with a newline; JSON answers (`recd history`) do not: add one, so
            // the shell's prompt starts on its own line.
            let text = String::from_utf8_lossy(&b);
            let end = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
            print!("{text}{end}");
            Ok(ExitCode::SUCCESS)
        }
        other => {
            println!("{other:?}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(super) fn get(socket: &Path, key: &str) -> anyhow::Result<ExitCode> {
    let json = match client::call(socket, &[b"GET", key.as_bytes(), b"WITHSOURCE"])? {
        Frame::Bulk(json) => json,
        Frame::Null => {
            eprintln!("no list for {key}");
            return Ok(ExitCode::FAILURE);
        }
        other => return print_reply(other),
    };
    let answer: serde_json::Value = serde_json::from_slice(&json)?;
    if answer["value"].as_array().is_some_and(Vec::is_empty) {
        eprintln!("no list for {key}");
        return Ok(ExitCode::FAILURE);
    }
    // Where the answer came from when a fallback gave it: its user's list or its default.
    if answer["fallback"].as_bool() == Some(true) {
        println!("(from {})", answer["source"].as_str().unwrap_or_default());
    }
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    match &answer["value"] {
        serde_json::Value::Array(list) => {
            for (rank, entry) in list.iter().enumerate() {
                println!("{:>3}  {:<12} {}", rank + 1, text(&entry["item"]), text(&entry["score"]));
            }
        }
        serde_json::Value::Object(fields) => {
            for (field, value) in fields {
                println!("{field}: {}", text(value));
            }
        }
        other => println!("{other}"),
    }
    Ok(ExitCode::SUCCESS)
}
