//! Item titles for the dashboard's user lookup, from the files jobs name in
//! `item_titles`. A file is read once and again only when its size or modification time
//! changes; reading happens on a blocking thread, never on the read socket's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use recd_plugin_api::columns::{column, ids_as_strings};

use crate::daemon::Daemon;
use crate::job::ItemTitles;

type TitleMap = Arc<HashMap<String, String>>;

/// A file as last read: its size and modification time, and its titles.
struct Cached {
    stamp: (u64, Option<SystemTime>),
    titles: TitleMap,
}

/// (file, id column, title column) -> titles.
type Cache = Mutex<HashMap<(PathBuf, String, String), Cached>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The titles every job names, the first job (by name) winning for an item two name; and
/// why a file could not be read.
pub struct Titles {
    maps: Vec<TitleMap>,
    pub errors: Vec<String>,
}

impl Titles {
    pub fn get(&self, item: &str) -> Option<&str> {
        self.maps.iter().find_map(|m| m.get(item)).map(String::as_str)
    }
}

pub fn for_jobs(daemon: &Daemon) -> Titles {
    let mut titles = Titles { maps: Vec::new(), errors: Vec::new() };
    let specs: Vec<(String, ItemTitles)> =
        daemon.jobs().jobs.into_values().filter_map(|j| Some((j.name, j.item_titles?))).collect();
    // Files no job names any more are forgotten.
    cache().lock().expect("titles cache").retain(|key, _| specs.iter().any(|(_, spec)| *key == key_of(spec)));
    for (job, spec) in &specs {
        match read(spec) {
            Ok(map) => titles.maps.push(map),
            Err(e) => titles.errors.push(format!("job {job}: item_titles: {e}")),
        }
    }
    titles
}

fn key_of(spec: &ItemTitles) -> (PathBuf, String, String) {
    (spec.input.path.clone(), spec.id.clone(), spec.title.clone())
}

fn read(spec: &ItemTitles) -> Result<TitleMap, String> {
    let path = &spec.input.path;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let stamp = (meta.len(), meta.modified().ok());
    let key = key_of(spec);
    if let Some(c) = cache().lock().expect("titles cache").get(&key)
        && c.stamp == stamp
    {
        return Ok(Arc::clone(&c.titles));
    }
    let titles = Arc::new(read_file(spec)?);
    cache().lock().expect("titles cache").insert(key, Cached { stamp, titles: Arc::clone(&titles) });
    Ok(titles)
}

fn read_file(spec: &ItemTitles) -> Result<HashMap<String, String>, String> {
    let shown = spec.input.path.display();
    let batch = crate::worker::read_input_with_text(&spec.input, &[spec.id.as_str(), spec.title.as_str()])
        .map_err(|e| format!("{shown}: {e:#}"))?;
    let strings = |name: &str| {
        column(&batch, &spec.input.name, name)
            .and_then(|c| ids_as_strings(c, name))
            .map_err(|e| format!("{shown}: {e}"))
    };
    let (ids, names) = (strings(&spec.id)?, strings(&spec.title)?);
    let mut map = HashMap::with_capacity(ids.len());
    for (id, name) in ids.into_iter().zip(names) {
        if let (Some(id), Some(name)) = (id, name) {
            map.entry(id).or_insert(name);
        }
    }
    Ok(map)
}
