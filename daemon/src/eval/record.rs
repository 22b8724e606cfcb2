//! `recd eval --record`: the report's numbers kept with the version that was read, through
//! the admin socket (`EVALRECORD`), for the dashboard's quality charts.
//!
//! The version is the one serving when the evaluation starts; if another version is
//! serving when it ends, the lists read may mix the two, so nothing is recorded. (A switch
//! away and back, or a new version of a fallback table, goes unseen.) An A/B experiment is
//! no table: record each variant's table instead.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};

use super::{ChurnReport, EvalArgs, Report};
use crate::resp::Frame;
use crate::store::EvalRecord;

/// The version of `table` serving now, from the admin socket's `LINEAGE table`.
pub fn serving_version(admin: &Path, table: &str) -> anyhow::Result<u64> {
    let reply = crate::client::call(admin, &[b"LINEAGE", table.as_bytes()])
        .with_context(|| format!("--record: asking {} which version of `{table}` serves", admin.display()))?;
    let json = match reply {
        Frame::Bulk(json) => json,
        Frame::Error(e) => bail!("--record: {}", e.trim_start_matches("ERR ")),
        other => bail!("--record: unexpected LINEAGE reply {other:?}"),
    };
    let info: serde_json::Value = serde_json::from_slice(&json).context("--record: LINEAGE reply")?;
    info["version"].as_u64().context("--record: LINEAGE reply has no version")
}

/// Sends `record` to be kept with `version` of `table`, unless another version serves now.
pub fn send_record(admin: &Path, table: &str, version: u64, record: &EvalRecord) -> anyhow::Result<()> {
    let now = serving_version(admin, table)?;
    if now != version {
        bail!(
            "--record: table `{table}` switched from version {version} to {now} while it was evaluated, so the lists read may mix both; nothing recorded, evaluate again"
        );
    }
    let json = serde_json::to_vec(record).expect("a record serialises");
    let version = version.to_string();
    let args: [&[u8]; 4] = [b"EVALRECORD", table.as_bytes(), version.as_bytes(), &json];
    let reply = crate::client::call(admin, &args)
        .with_context(|| format!("--record: sending the record to {}", admin.display()))?;
    match reply {
        Frame::Simple(_) => Ok(()),
        Frame::Error(e) => bail!("--record: {}", e.trim_start_matches("ERR ")),
        other => bail!("--record: unexpected EVALRECORD reply {other:?}"),
    }
}

/// Which users a list evaluation counted and how, in words: the same words for two
/// records mean their numbers compare.
fn list_setting(args: &EvalArgs) -> String {
    let users = match args.max_past_items.or(args.cold_only.then_some(0)) {
        Some(0) => "users new after the cut-off".to_string(),
        Some(n) => format!("users with at most {n} past items"),
        None if args.warm_only => "users with past items".to_string(),
        None => "all users".to_string(),
    };
    let answers = if args.own_lists_only { "own lists only" } else { "fallback answers scored" };
    let repeats = if args.include_repeats { ", repeats relevant" } else { "" };
    format!("k={}, {users}, {answers}{repeats}", args.k)
}

impl Report {
    /// The numbers to record.
    pub fn to_record(&self, args: &EvalArgs) -> EvalRecord {
        let metrics = kept(self.measures().into_iter().map(|(key, _, v)| (key, v)));
        EvalRecord {
            recorded_at: String::new(),
            setting: list_setting(args),
            cutoff: cutoff_text(&self.cutoff),
            users: self.users as u64,
            metrics,
        }
    }
}

impl ChurnReport {
    /// The numbers to record.
    pub fn to_record(&self, args: &EvalArgs) -> EvalRecord {
        let measured = self.measures().into_iter().map(|(key, _, v)| (key, v));
        let metrics = kept(measured.chain([("base_rate", Some(self.base_rate))]));
        EvalRecord {
            recorded_at: String::new(),
            setting: format!("churn within {} days, field {}", self.horizon_days, args.probability_field),
            cutoff: cutoff_text(&self.cutoff),
            users: self.users_scored as u64,
            metrics,
        }
    }
}

/// The cut-off one way however it was given (`2011-11-01` and `2011-11-01T00:00:00Z` alike).
fn cutoff_text(given: &str) -> String {
    super::parse_cutoff(given).map_or_else(|_| given.to_string(), |t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
}

/// The measured, finite values only: n/a and NaN (no users) are left out.
fn kept<'a>(measures: impl Iterator<Item = (&'a str, Option<f64>)>) -> BTreeMap<String, f64> {
    measures.filter_map(|(key, v)| v.filter(|v| v.is_finite()).map(|v| (key.to_string(), v))).collect()
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    use super::*;

    /// An admin socket that answers every request with `version`'s LINEAGE and records
    /// the commands it was sent.
    fn admin_serving(dir: &Path, version: u64) -> (std::path::PathBuf, std::thread::JoinHandle<Vec<String>>) {
        let path = dir.join("admin.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let served = std::thread::spawn(move || {
            let mut seen = Vec::new();
            // LINEAGE, then EVALRECORD if the client goes that far
            for _ in 0..2 {
                let Ok((mut conn, _)) = listener.accept() else { break };
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break; // the test's nudge: no request
                }
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                let json = format!("{{\"version\":{version}}}");
                let reply = if request.contains("EVALRECORD") {
                    "+OK\r\n".to_string()
                } else {
                    format!("${}\r\n{json}\r\n", json.len())
                };
                conn.write_all(reply.as_bytes()).unwrap();
                seen.push(request.split("\r\n").nth(2).unwrap_or_default().to_string());
                if request.contains("EVALRECORD") {
                    break;
                }
            }
            seen
        });
        (path, served)
    }

    fn a_record() -> EvalRecord {
        EvalRecord {
            recorded_at: String::new(),
            setting: "k=10".into(),
            cutoff: "2021-01-01T00:00:00".into(),
            users: 1,
            metrics: BTreeMap::from([("ndcg@k".to_string(), 0.5)]),
        }
    }

    #[test]
    fn nothing_is_recorded_when_another_version_serves_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (admin, served) = admin_serving(dir.path(), 2);
        let err = send_record(&admin, "t", 1, &a_record()).unwrap_err().to_string();
        assert!(err.contains("switched from version 1 to 2") && err.contains("nothing recorded"), "{err}");
        drop(std::os::unix::net::UnixStream::connect(&admin)); // ends the server's loop
        assert_eq!(served.join().unwrap(), vec!["LINEAGE"], "no EVALRECORD was sent");

        let dir = tempfile::tempdir().unwrap();
        let (admin, served) = admin_serving(dir.path(), 1);
        send_record(&admin, "t", 1, &a_record()).unwrap();
        assert_eq!(served.join().unwrap(), vec!["LINEAGE", "EVALRECORD"]);
    }

    #[test]
    fn a_cutoff_is_kept_one_way_however_it_was_given() {
        assert_eq!(cutoff_text("2011-11-01"), "2011-11-01T00:00:00");
        assert_eq!(cutoff_text("2011-11-01T00:00:00Z"), "2011-11-01T00:00:00");
        assert_eq!(cutoff_text("2011-11-01T02:00:00+02:00"), "2011-11-01T00:00:00");
    }
}
