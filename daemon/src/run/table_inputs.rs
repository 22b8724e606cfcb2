//! A run's scratch folder: `table:<name>` inputs written there as Arrow IPC files for the
//! worker, removed when the run ends (and, after a crash, at the next start).

use crate::job::{Input, InputFormat};
use crate::store::{Store, TableKind};

use super::RunError;

/// Removes the scratch folders of runs a killed daemon left behind (`<data_dir>/runs/<id>`:
/// exported `table:` inputs, as big as the tables). Called at start-up, before any run.
pub fn remove_leftover_run_dirs(data_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("runs")) else { return };
    for entry in entries.flatten() {
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => tracing::info!(dir = %entry.path().display(), "removed the scratch folder of an interrupted run"),
            Err(e) => {
                tracing::warn!(dir = %entry.path().display(), "cannot remove an interrupted run's scratch folder: {e}")
            }
        }
    }
}

/// Deletes a scratch folder (a run's, an export's) when its scope ends, however it ends.
pub struct RemoveOnDrop(pub std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes each `table:<name>` input, as currently served, to an Arrow IPC file the worker
/// reads (columns user, item, score, rank); other inputs pass through. Also gives the
/// version each table input was exported at, by input name.
pub(super) fn export_table_inputs(
    inputs: &[Input],
    store: &Store,
    run_dir: &std::path::Path,
) -> Result<(Vec<Input>, std::collections::BTreeMap<String, u64>), RunError> {
    let mut out = Vec::with_capacity(inputs.len());
    let mut versions = std::collections::BTreeMap::new();
    for input in inputs {
        if input.format != InputFormat::Table {
            out.push(input.clone());
            continue;
        }
        let table = input.path.display().to_string();
        let served = store.served(&table).ok_or_else(|| {
            RunError::Failed(format!("input `{}`: table `{table}` has not been published", input.name))
        })?;
        if served.kind != TableKind::Lists {
            return Err(RunError::Failed(format!(
                "input `{}`: table `{table}` holds hashes; only tables of lists can be inputs",
                input.name
            )));
        }
        std::fs::create_dir_all(run_dir).map_err(anyhow::Error::from)?;
        let path = run_dir.join(format!("{}.arrow", input.name));
        write_table(&served, &path).map_err(|e| RunError::Failed(format!("exporting table `{table}`: {e:#}")))?;
        versions.insert(input.name.clone(), served.version);
        out.push(Input { name: input.name.clone(), path, format: InputFormat::ArrowIpc, registry: None });
    }
    Ok((out, versions))
}

fn write_table(served: &crate::store::ServedTable, path: &std::path::Path) -> anyhow::Result<()> {
    let schema = crate::tables::lists_schema();
    let mut writer = arrow_ipc::writer::FileWriter::try_new(std::fs::File::create(path)?, &schema)?;
    crate::tables::table_batches(served, |batch| Ok(writer.write(&batch)?))?;
    writer.finish()?;
    Ok(())
}
