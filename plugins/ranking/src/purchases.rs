//! Who bought what: the id vocabularies, and the interactions held compactly or walked one
//! user at a time when each user's lines are together.

use crate::*;

/// The model's id vocabularies: position in `users`/`items` is the model index.
pub(crate) struct Vocab {
    pub(crate) users: IdIndex,
    pub(crate) items: IdIndex,
}

impl Vocab {
    pub(crate) fn read(ctx: &RunContext<'_>) -> Result<Self, PluginError> {
        Ok(Vocab { users: read_vocab(ctx, "users", "user_id")?, items: read_vocab(ctx, "items", "item_id")? })
    }
}

/// A vocabulary input (`<id>,index`) read as a stream: `users` is one of the plugin's
/// `stream_inputs`, so a million-user file is never in memory whole, only its index.
pub(crate) fn read_vocab(ctx: &RunContext<'_>, table: &str, id_column: &str) -> Result<IdIndex, PluginError> {
    let mut builder = IdIndexBuilder::new(table);
    for batch in ctx.input_stream(table, &[id_column, "index"])? {
        let batch = batch?;
        builder.add(batch.column(0), batch.column(1))?;
    }
    builder.finish()
}

/// Where each user's purchases come from while the run scores them.
pub(crate) enum Purchases {
    /// The interactions are grouped by user (each user's lines next to each other, as
    /// an export sorted by user gives them): read again while scoring, one user at a
    /// time, so memory does not grow with the users.
    Grouped(PurchaseColumns),
    /// Any other order: every user's purchases, held at once.
    Held(Held),
}

/// Per model user index, the model item indices bought: sorted, each once, in one flat
/// list (4 bytes per purchase and 4 per user; a `Vec` per user cost 40 bytes more each).
pub(crate) struct Held {
    /// User `u`'s items are `items[starts[u]..starts[u + 1]]`.
    pub(crate) starts: Vec<u32>,
    pub(crate) items: Vec<u32>,
}

impl Held {
    pub(crate) fn users(&self) -> usize {
        self.starts.len() - 1
    }

    pub(crate) fn of(&self, user: usize) -> &[u32] {
        &self.items[self.starts[user] as usize..self.starts[user + 1] as usize]
    }
}

/// The interactions' columns a purchase is read from.
pub(crate) struct PurchaseColumns {
    pub(crate) names: Vec<String>,
    pub(crate) user_what: String,
    pub(crate) item_what: String,
    pub(crate) cancelled_what: Option<String>,
}

impl PurchaseColumns {
    pub(crate) fn new(ctx: &RunContext<'_>, p: &Params) -> Result<Self, PluginError> {
        let t = "interactions";
        let has_cancelled = ctx.input(t)?.schema_ref().index_of(&p.cancelled_column).is_ok();
        let mut names = vec![p.user_column.clone(), p.item_column.clone()];
        if has_cancelled {
            names.push(p.cancelled_column.clone());
        }
        Ok(PurchaseColumns {
            names,
            user_what: format!("{t}.{}", p.user_column),
            item_what: format!("{t}.{}", p.item_column),
            cancelled_what: has_cancelled.then(|| format!("{t}.{}", p.cancelled_column)),
        })
    }

    pub(crate) fn open(&self, ctx: &RunContext<'_>) -> Result<InputStream, PluginError> {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        ctx.input_stream("interactions", &names)
    }

    /// One batch's lines as (user, item) model indices: `None` for ids the model does not
    /// know, and the item `None` too for a cancelled line.
    pub(crate) fn lines(&self, batch: &RecordBatch, vocab: &Vocab) -> Result<Vec<Line>, PluginError> {
        let users = vocab.users.positions(batch.column(0), &self.user_what)?;
        let mut items = vocab.items.positions(batch.column(1), &self.item_what)?;
        if let Some(what) = &self.cancelled_what {
            for (item, cancelled) in items.iter_mut().zip(booleans(batch.column(2).as_ref(), what)?) {
                if cancelled == Some(true) {
                    *item = None;
                }
            }
        }
        Ok(users.into_iter().zip(items).collect())
    }
}

/// How a walk over the users' purchases ended.
pub(crate) enum Walk {
    /// Every user with lines was handed over; the set says which.
    Done(Bits),
    /// The callback said stop.
    Stopped,
    /// A user's lines are not all together: `user` shows up again at `row` (from 0).
    NotGrouped { row: u64, user: u32 },
}

/// A set of model user indices, a bit each.
pub(crate) struct Bits(pub(crate) Vec<u64>);

impl Bits {
    pub(crate) fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    pub(crate) fn has(&self, i: u32) -> bool {
        self.0[i as usize / 64] >> (i % 64) & 1 == 1
    }
    pub(crate) fn insert(&mut self, i: u32) {
        self.0[i as usize / 64] |= 1 << (i % 64);
    }
}

/// Hands each user of grouped interactions to `f` with their purchases (sorted, each
/// once) as soon as their last line is read, in the file's order; lines of users the
/// model does not know are skipped wherever they are. Stops at the first user whose
/// lines are not together.
pub(crate) fn walk_groups(
    stream: InputStream,
    columns: &PurchaseColumns,
    vocab: &Vocab,
    mut f: impl FnMut(u32, &[u32]) -> Result<bool, PluginError>,
) -> Result<Walk, PluginError> {
    let mut done = Bits::new(vocab.users.len());
    let mut current: Option<u32> = None;
    let mut bought: Vec<u32> = Vec::new();
    let mut row = 0u64;
    let mut finish = |user: u32, bought: &mut Vec<u32>, done: &mut Bits| {
        bought.sort_unstable();
        bought.dedup();
        done.insert(user);
        let go_on = f(user, bought);
        bought.clear();
        go_on
    };
    for batch in stream {
        for (user, item) in columns.lines(&batch?, vocab)? {
            let at = row;
            row += 1;
            let Some(user) = user else { continue };
            if current != Some(user) {
                if done.has(user) {
                    return Ok(Walk::NotGrouped { row: at, user });
                }
                if let Some(last) = current.replace(user)
                    && !finish(last, &mut bought, &mut done)?
                {
                    return Ok(Walk::Stopped);
                }
            }
            bought.extend(item);
        }
    }
    if let Some(last) = current
        && !finish(last, &mut bought, &mut done)?
    {
        return Ok(Walk::Stopped);
    }
    Ok(Walk::Done(done))
}

/// Each user's purchases, in the order the batch builder gets them.
pub(crate) enum Walker<'a> {
    Held(&'a Held),
    /// The grouped interactions, read again.
    Grouped(InputStream, &'a PurchaseColumns),
}

impl Walker<'_> {
    /// Hands every user of the vocabulary to `f` once, with their purchases, until `f`
    /// says stop. Held: in index order. Grouped: in the file's order, then the users
    /// without a line (in index order).
    pub(crate) fn walk(
        self,
        vocab: &Vocab,
        mut f: impl FnMut(u32, &[u32]) -> Result<bool, PluginError>,
    ) -> Result<(), PluginError> {
        match self {
            Walker::Held(held) => {
                for u in 0..held.users() {
                    if !f(u as u32, held.of(u))? {
                        break;
                    }
                }
                Ok(())
            }
            Walker::Grouped(stream, columns) => match walk_groups(stream, columns, vocab, &mut f)? {
                Walk::Stopped => Ok(()),
                Walk::NotGrouped { .. } => Err(PluginError::input("interactions: the input changed while it was read")),
                Walk::Done(seen) => {
                    for u in (0..vocab.users.len() as u32).filter(|&u| !seen.has(u)) {
                        if !f(u, &[])? {
                            break;
                        }
                    }
                    Ok(())
                }
            },
        }
    }
}
