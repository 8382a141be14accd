//! A follower of a shared directory applies another gateway's commits: only the entries of
//! what the commit changed, when it can tell them from the commit alone.
use super::{index, set_resource, Engine};
use crate::dataplane::{Change, ServerEntry};
use crate::directory::LogEntry;

impl Engine {
    /// Applies `entry` (the commit of the revision after the engine's) and returns the
    /// dataplane changes it makes: servers whose dataplane fields changed, resources whose
    /// server changed. `None`, changing nothing, when the commit needs the whole state
    /// compared (not the next revision, a removal, a new server or resource, a server with a
    /// new id, a resource the configuration does not know): the caller then resyncs.
    pub fn follow(&mut self, entry: &LogEntry) -> Option<Vec<Change>> {
        let u = &entry.update;
        if entry.revision != self.snapshot.revision + 1
            || !u.remove_servers.is_empty()
            || !u.remove_resources.is_empty()
        {
            return None;
        }
        let mut changes = Vec::new();
        for s in &u.set_servers {
            let prev = self.snapshot.servers.get(&s.name)?;
            if prev.id != s.id {
                return None;
            }
            if prev.address != s.address
                || prev.dataplane_up != s.dataplane_up
                || prev.generation != s.generation
            {
                changes.push(Change::SetServer {
                    id: s.id,
                    server: ServerEntry {
                        addr: s.address,
                        up: s.dataplane_up,
                        generation: s.generation,
                    },
                });
            }
        }
        // Server ids by name after the commit (a set server keeps its id: checked above).
        let server_id = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| self.snapshot.servers.get(n))
                .map(|s| s.id)
        };
        for r in &u.set_resources {
            let i = *self.index.by_name.get(&r.name)?;
            let prev = self.snapshot.resources.get(&r.name)?;
            if prev.id != r.id {
                return None; // a new record: the return and fragment entries follow ids
            }
            if prev.current != r.current || prev.generation != r.generation {
                changes.extend(set_resource(
                    &self.config.resources[i],
                    r,
                    server_id(&r.current),
                ));
            }
        }
        self.forget_deadline();
        entry.apply_to(&mut self.snapshot);
        index::track(&mut self.displaced, u);
        Some(changes)
    }
}
