//! Candidate pools: every unseen item, the most popular ones, or an upstream table's list;
//! and which users other shards compute.

use crate::*;

/// Hands each batch of at least `batch_pairs` pairs (the last may be smaller) to `take`
/// with the number of users done so far; stops early when `take` says no. A user's
/// candidates are the pool minus what they bought, found with a stamp per item (the
/// user who last marked it) instead of a set lookup per pair.
/// Per model user index, whether the user belongs to another shard of a sharded run (the
/// host drops their rows, so they are not scored); None when this run computes everyone.
pub(crate) fn other_shards(ctx: &RunContext<'_>, vocab: &Vocab) -> Option<Vec<bool>> {
    let others: Vec<bool> = (0..vocab.users.len()).map(|u| !ctx.in_shard(vocab.users.id(u as u32))).collect();
    let skipped = others.iter().filter(|&&o| o).count();
    if skipped == 0 {
        return None;
    }
    ctx.log(LogLevel::Info, &format!("a shard of the run: {skipped} of {} users are other shards'", others.len()));
    Some(others)
}

/// Candidate items: the same for every user, or each user's own (model indices).
pub(crate) enum Pool {
    All(Vec<usize>),
    PerUser(HashMap<usize, Vec<usize>>),
}

impl Pool {
    /// About how many pairs a run scores: every user's candidates, before what they
    /// bought is taken out.
    pub(crate) fn pairs(&self, users: usize) -> usize {
        match self {
            Pool::All(items) => items.len() * users,
            Pool::PerUser(lists) => lists.values().map(Vec::len).sum(),
        }
    }

    /// The most candidates one user can have.
    pub(crate) fn max_per_user(&self) -> usize {
        match self {
            Pool::All(items) => items.len(),
            Pool::PerUser(lists) => lists.values().map(Vec::len).max().unwrap_or(0),
        }
    }

    /// The pool with `items` taken out.
    pub(crate) fn without(self, items: &HashSet<u32>) -> Pool {
        let keep = |list: &mut Vec<usize>| list.retain(|i| !items.contains(&(*i as u32)));
        match self {
            Pool::All(mut list) => {
                keep(&mut list);
                Pool::All(list)
            }
            Pool::PerUser(mut lists) => {
                lists.values_mut().for_each(keep);
                Pool::PerUser(lists)
            }
        }
    }
}

/// Each known user's items from input `pool` (columns `user`, `item`; ids the model does
/// not know are skipped).
pub(crate) fn upstream_pool(ctx: &RunContext<'_>, vocab: &Vocab) -> Result<HashMap<usize, Vec<usize>>, PluginError> {
    let t = "pool";
    let batch = ctx.input(t)?;
    let users = vocab.users.positions(column(batch, t, "user")?, "pool.user")?;
    let items = vocab.items.positions(column(batch, t, "item")?, "pool.item")?;
    let mut out: HashMap<usize, Vec<usize>> = HashMap::new();
    for (u, i) in users.into_iter().zip(items) {
        if let (Some(u), Some(i)) = (u, i) {
            out.entry(u as usize).or_default().push(i as usize);
        }
    }
    Ok(out)
}

/// The `size` items with the most distinct buyers (ties: lower index first).
/// Items in `unavailable` are left out before the pool is cut to `size`.
pub(crate) fn popular_pool(buyers: &[u32], size: usize, unavailable: &HashSet<u32>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..buyers.len()).filter(|&i| !unavailable.contains(&(i as u32))).collect();
    order.sort_by(|&a, &b| buyers[b].cmp(&buyers[a]).then(a.cmp(&b)));
    order.truncate(size);
    order
}
