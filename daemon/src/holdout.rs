//! A gate's holdout: the interactions a table's lists are scored against before a new
//! version goes live (`[gate] holdout`, checked in `store::gate`). Read once per run, in
//! the daemon, before the worker starts: a holdout that cannot be read fails the run
//! before any work is done.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use recd_plugin_api::columns::{booleans, column, ids_as_strings};

use crate::job::Input;
use crate::store::{Gate, HoldoutGate, HoldoutTruth};

/// `gate` with its holdout read (the same gate when it has none).
pub fn loaded(gate: &Gate) -> Result<Gate, String> {
    let mut gate = gate.clone();
    if let Some(h) = &mut gate.holdout {
        h.truth = Some(Arc::new(read(h)?));
    }
    Ok(gate)
}

/// Each user's items in the holdout file. Rows with an empty user or item are skipped, as
/// are rows a `cancelled` column marks true (as `recd eval` reads interactions).
fn read(h: &HoldoutGate) -> Result<HoldoutTruth, String> {
    let shown = h.path.display();
    let input =
        Input::file("holdout", &h.path).ok_or_else(|| format!("holdout {shown}: not a CSV, Parquet or Arrow file"))?;
    let ids = [h.user_column.as_str(), h.item_column.as_str()];
    let batch = crate::worker::read_input_with_text(&input, &ids).map_err(|e| format!("holdout {shown}: {e:#}"))?;
    let err = |e: recd_plugin_api::PluginError| format!("holdout {shown}: {e}");
    let users = ids_as_strings(column(&batch, "holdout", &h.user_column).map_err(err)?, &h.user_column).map_err(err)?;
    let items = ids_as_strings(column(&batch, "holdout", &h.item_column).map_err(err)?, &h.item_column).map_err(err)?;
    let cancelled = match batch.column_by_name("cancelled") {
        Some(c) => booleans(c.as_ref(), "cancelled").map_err(err)?,
        None => vec![None; batch.num_rows()],
    };
    let mut by_user: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for ((user, item), cancelled) in users.into_iter().zip(items).zip(cancelled) {
        if let (Some(user), Some(item), false) = (user, item, cancelled == Some(true))
            && !user.is_empty()
            && !item.is_empty()
        {
            by_user.entry(user).or_default().insert(item);
        }
    }
    if by_user.is_empty() {
        return Err(format!("holdout {shown}: no rows with a user and an item"));
    }
    Ok(HoldoutTruth { users: by_user.into_iter().collect() })
}
