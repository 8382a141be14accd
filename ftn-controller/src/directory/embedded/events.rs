//! The event log's files: `events.jsonl` and its previous generation read at open, and the
//! rotation from one to the other (see the parent module's docs).

use super::*;

/// What reading the event log found.
pub(super) struct EventsRead {
    pub(super) scan: Scanned,
    /// The first committed event's sequence number, and how many committed events there are.
    pub(super) first: Option<u64>,
    pub(super) count: u64,
    /// The newest events of committed revisions (at most [`EVENTS_IN_MEMORY`]).
    pub(super) recent: VecDeque<Event>,
    /// Where the last event of a committed revision ends.
    pub(super) committed_end: u64,
    /// Events of the revision after `rev`, the commit that was in progress.
    pub(super) uncommitted: u64,
}

/// Events of committed revisions (up to `rev`), then maybe those of the commit that was in
/// progress (its events landed, its WAL line did not).
pub(super) fn read_events(events_path: &Path, rev: Revision) -> Result<EventsRead, DirectoryError> {
    let mut recent: VecDeque<Event> = VecDeque::new();
    let mut last: Option<(u64, Revision)> = None;
    let mut committed_end = 0u64;
    let mut uncommitted = 0u64;
    let mut first = None;
    let mut count = 0u64;
    let scan = scan_records::<Event>(events_path, |e, sealed, at| {
        if let (Some((seq, revision)), true) = (last, sealed) {
            if e.seq != seq + 1 {
                let what = if e.seq > seq + 1 {
                    missing("event", seq + 1, e.seq - 1)
                } else {
                    "sequence numbers must go up by one".to_string()
                };
                return Err(format!("event {} follows event {seq}: {what}", e.seq));
            }
            if e.revision < revision {
                return Err(format!("event {} belongs to revision {} but follows an event of revision {revision}: revisions never go back", e.seq, e.revision));
            }
        }
        last = Some((e.seq, e.revision));
        if e.revision > rev {
            if e.revision > rev + 1 {
                return Err(format!("event {} belongs to revision {}, but state.json and wal.jsonl end at revision {rev}: wal.jsonl has lost commits ({})", e.seq, e.revision, missing("revision", rev + 1, e.revision - 1)));
            }
            uncommitted += 1;
            return Ok(());
        }
        if uncommitted > 0 {
            return Err(format!("event {} of committed revision {} follows events of revision {}, which never committed: those can only be the end of the file", e.seq, e.revision, rev + 1));
        }
        committed_end = at.end();
        first.get_or_insert(e.seq);
        count += 1;
        if recent.len() == EVENTS_IN_MEMORY {
            recent.pop_front();
        }
        recent.push_back(e);
        Ok(())
    })?;
    Ok(EventsRead {
        scan,
        first,
        count,
        recent,
        committed_end,
        uncommitted,
    })
}

/// The previous generation of the event log (`events.1.jsonl`), when the current one holds
/// fewer than [`EVENTS_IN_MEMORY`] events: its newest events, to put before `current`'s in
/// memory. It was complete when it was rotated, so a torn or uncommitted tail, or an end that
/// does not meet the current file's first event, is corruption.
pub(super) fn read_previous_events(
    path: &Path,
    rev: Revision,
    current_first: Option<u64>,
) -> Result<VecDeque<Event>, DirectoryError> {
    let read = read_events(path, rev)?;
    let at = At {
        offset: read.committed_end,
        ..At::default()
    };
    if let Some(torn) = read.scan.torn_desc() {
        return Err(corrupt(
            path,
            at,
            format!("{torn}: the previous event log was complete when it was rotated"),
        ));
    }
    if read.uncommitted > 0 {
        return Err(corrupt(path, at, format!("{} events of revision {}, which never committed: the previous event log holds committed events only", read.uncommitted, rev + 1)));
    }
    if let (Some(last), Some(first)) = (read.recent.back(), current_first) {
        if last.seq + 1 != first {
            return Err(corrupt(path, at, format!("it ends at event {} but events.jsonl begins at event {first}: the two event logs must meet", last.seq)));
        }
    }
    Ok(read.recent)
}

/// `events.jsonl` becomes `events.1.jsonl` (replacing the previous generation) and a new
/// empty one takes its place (see the module docs). Runs after a commit returned durable,
/// under the store's lock, so the file holds committed events only.
pub(super) fn rotate(dir: &Path, inner: &mut Inner) -> Result<(), DirectoryError> {
    inner.events = set_aside(dir, "events.jsonl", "events.1.jsonl", &mut inner.poisoned)?;
    tracing::info!(
        events = inner.events_in_file,
        "event log rotated: events.jsonl is now events.1.jsonl (the generation before it is gone)"
    );
    inner.events_in_file = 0;
    Ok(())
}
