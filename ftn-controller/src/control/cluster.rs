//! Several gateways on one etcd directory: the view of the other gateways, the majority of
//! their observations that the leader decides from, and what a follower applies.

use super::*;
use crate::directory::LogEntry;

/// This gateway's part in a shared directory: only the leader decides; every gateway checks
/// the servers, publishes what it sees, and applies the directory's changes to its maps.
pub struct ClusterView {
    pub me: String,
    pub dir: Arc<EtcdDirectory>,
    pub session: Session,
    pub(super) leader: Option<String>,
    /// Set while this gateway leads: the leader key's create-revision.
    pub(super) fence: Option<i64>,
    pub(super) etcd_ok: bool,
    pub(super) etcd_error: Option<String>,
    pub(super) etcd_since_ms: u64,
    /// Live gateways' records (from etcd).
    pub(super) gateways: BTreeMap<String, GatewayRecord>,
    /// This gateway's own verdicts.
    pub(super) local: BTreeMap<String, Observed>,
    /// Majority verdicts already given to the engine (leader only).
    pub(super) fed: BTreeMap<String, bool>,
    pub(super) leaderships: u64,
}

impl ClusterView {
    pub fn new(me: String, dir: Arc<EtcdDirectory>, session: Session) -> Self {
        ClusterView {
            me,
            dir,
            session,
            leader: None,
            fence: None,
            etcd_ok: true,
            etcd_error: None,
            etcd_since_ms: crate::directory::now_ms(),
            gateways: BTreeMap::new(),
            local: BTreeMap::new(),
            fed: BTreeMap::new(),
            leaderships: 0,
        }
    }

    pub(super) fn leads(&self) -> bool {
        self.fence.is_some()
    }

    /// The majority verdicts (see [`majority`]), this gateway counting with its own latest
    /// verdicts.
    pub(super) fn majority(&self) -> BTreeMap<String, (bool, String)> {
        let peers = self
            .gateways
            .iter()
            .filter(|(name, _)| **name != self.me)
            .map(|(name, r)| (name.as_str(), &r.observations));
        majority(peers.chain([(self.me.as_str(), &self.local)]))
    }
}

/// Per server: up or down when more than half of the live gateways that report on it say so
/// (with the evidence); no verdict on a tie.
/// `records`: each live gateway's name and observations.
pub fn majority<'a>(
    records: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, Observed>)>,
) -> BTreeMap<String, (bool, String)> {
    // server -> (gateways that see it up, (gateway, evidence) that see it down)
    type Votes<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let mut tally: BTreeMap<&str, Votes> = BTreeMap::new();
    for (gw, observations) in records {
        for (server, o) in observations {
            let t = tally.entry(server.as_str()).or_default();
            if o.up {
                t.0.push(gw);
            } else {
                t.1.push((gw, o.evidence.as_str()));
            }
        }
    }
    let mut out = BTreeMap::new();
    for (server, (up, down)) in tally {
        let n = up.len() + down.len();
        if down.len() * 2 > n {
            let why = down
                .iter()
                .map(|(g, e)| format!("{g}: {e}"))
                .collect::<Vec<_>>()
                .join("; ");
            out.insert(
                server.to_owned(),
                (
                    false,
                    format!("{} of {n} gateways see it down ({why})", down.len()),
                ),
            );
        } else if up.len() * 2 > n {
            out.insert(
                server.to_owned(),
                (
                    true,
                    format!("{} of {n} gateways see it up ({})", up.len(), up.join(", ")),
                ),
            );
        }
    }
    out
}

/// The dataplane writes that take the maps from `old` to `new` (both full states).
pub(super) fn state_diff(old: Vec<Change>, new: Vec<Change>) -> Vec<Change> {
    let mut old_servers = BTreeMap::new();
    let mut old_resources = BTreeMap::new();
    let mut old_returns = BTreeMap::new();
    let mut old_fragments = BTreeMap::new();
    for c in old {
        match c {
            Change::SetServer { id, server } => {
                old_servers.insert(id, server);
            }
            Change::SetResource {
                matcher,
                assignment,
            } => {
                old_resources.insert(matcher, assignment);
            }
            Change::SetReturn { matcher, target } => {
                old_returns.insert(matcher, target);
            }
            Change::SetFragments { matcher, target } => {
                old_fragments.insert(matcher, target);
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    // A key given to another resource: established flows must be checked again.
    let mut reassigned = false;
    for c in new {
        match &c {
            Change::SetServer { id, server } => {
                if old_servers.remove(id).as_ref() != Some(server) {
                    out.push(c);
                }
            }
            Change::SetResource {
                matcher,
                assignment,
            } => {
                let old = old_resources.remove(matcher);
                reassigned |= old.is_some_and(|o| o.resource_id != assignment.resource_id);
                if old.as_ref() != Some(assignment) {
                    out.push(c);
                }
            }
            Change::SetReturn { matcher, target } => {
                if old_returns.remove(matcher).as_ref() != Some(target) {
                    out.push(c);
                }
            }
            Change::SetFragments { matcher, target } => {
                let old = old_fragments.remove(matcher);
                reassigned |= old.is_some_and(|o| o.resource_id != target.resource_id);
                if old.as_ref() != Some(target) {
                    out.push(c);
                }
            }
            _ => out.push(c),
        }
    }
    let removed = !old_resources.is_empty() || !old_fragments.is_empty() || !old_servers.is_empty();
    out.extend(
        old_resources
            .into_keys()
            .chain(old_fragments.into_keys())
            .map(|matcher| Change::RemoveResource { matcher }),
    );
    out.extend(
        old_returns
            .into_keys()
            .map(|matcher| Change::RemoveReturn { matcher }),
    );
    out.extend(
        old_servers
            .into_keys()
            .map(|id| Change::RemoveServer { id }),
    );
    if reassigned || removed {
        out.push(Change::RevalidateFlows);
    }
    out
}

impl Controller {
    /// Leader: gives the engine the majority's verdicts that changed.
    pub(super) fn feed_majority(&mut self) {
        let Some(cv) = &mut self.cluster else { return };
        let now = self.clock.now_ms();
        for (server, (up, evidence)) in cv.majority() {
            if cv.fed.get(&server) == Some(&up) {
                continue;
            }
            cv.fed.insert(server.clone(), up);
            self.engine.observe(
                &server,
                Observation {
                    up,
                    evidence,
                    at_ms: now,
                },
            );
        }
    }

    /// After the maps hold the engine's state: tells the other gateways which revision.
    pub(super) async fn publish_applied(&mut self) {
        let Some(cv) = &self.cluster else { return };
        if let Err(e) = self.sync.barrier().await {
            tracing::error!("map sync: {e}");
            return;
        }
        let rev = self.engine.snapshot().revision;
        cv.session.publish(|r| {
            r.applied_revision = rev;
            r.applied_at_ms = crate::directory::now_ms();
        });
    }

    /// A directory state from etcd: newer ones replace ours and go into the maps (only what
    /// differs); an older or equal revision is never applied.
    pub(super) async fn apply_snapshot(&mut self, snap: Snapshot) {
        let have = self.engine.snapshot().revision;
        if snap.revision <= have {
            return;
        }
        let old = self.engine.full_state();
        let rev = snap.revision;
        self.engine.resync(snap);
        let changes = state_diff(old, self.engine.full_state());
        tracing::debug!(
            revision = rev,
            changes = changes.len(),
            "applying the directory's changes"
        );
        self.sync.apply(changes);
        self.publish_applied().await;
        self.announce();
    }

    /// Another gateway's commit of the next revision: only what it changed goes into the
    /// maps. Anything the engine cannot follow from the commit alone (a gap, a removal, a new
    /// record) takes the whole-state path with the directory's newest state.
    pub(super) async fn apply_entry(&mut self, entry: &LogEntry) {
        if entry.revision <= self.engine.snapshot().revision {
            return;
        }
        match self.engine.follow(entry) {
            Some(changes) => {
                tracing::debug!(
                    revision = entry.revision,
                    changes = changes.len(),
                    "applying the directory's changes"
                );
                self.sync.apply(changes);
                self.publish_applied().await;
                self.announce();
            }
            None => {
                let Some(cv) = &self.cluster else { return };
                let current = cv.dir.current();
                self.apply_snapshot(current).await;
            }
        }
    }

    pub(super) async fn on_cluster(&mut self, ev: ClusterEvent) {
        let Some(cv) = &mut self.cluster else { return };
        match ev {
            ClusterEvent::Etcd { connected, error } => {
                if cv.etcd_ok != connected {
                    cv.etcd_since_ms = crate::directory::now_ms();
                    if connected {
                        tracing::info!("etcd answers again: catching up with the directory");
                    }
                }
                let changed = cv.etcd_ok != connected;
                cv.etcd_ok = connected;
                cv.etcd_error = error;
                if changed {
                    self.announce();
                }
            }
            ClusterEvent::Leader { name, fence } => {
                let was = cv.fence;
                cv.leader = name;
                cv.fence = fence;
                if fence.is_some() && was != fence {
                    cv.leaderships += 1;
                    cv.fed.clear();
                    self.engine.clear_observations();
                    let current = cv.dir.current();
                    let me = cv.me.clone();
                    tracing::info!(
                        fence = fence.unwrap_or(0),
                        "this gateway leads: deciding from the majority of the live gateways"
                    );
                    self.apply_snapshot(current).await;
                    let update = Update {
                        events: vec![EventDraft {
                            kind: "leader".into(),
                            resource: None,
                            server: None,
                            message: format!(
                                "gateway {me} leads the directory (fence {})",
                                fence.unwrap_or(0)
                            ),
                        }],
                        ..Default::default()
                    };
                    match self
                        .directory
                        .commit(self.engine.snapshot().revision, &update)
                        .await
                    {
                        Ok(rev) => self.engine.committed(&update, rev),
                        Err(e) => tracing::warn!("recording the leadership: {e}"),
                    }
                    let _ = self.step(None).await;
                } else if fence.is_none() && was.is_some() {
                    tracing::warn!("this gateway no longer leads");
                }
            }
            ClusterEvent::Gateways(gateways) => {
                // A peer that sees a server fail makes this gateway check it at once.
                let mut suspects = Vec::new();
                for (gw, r) in &gateways {
                    if *gw == cv.me {
                        continue;
                    }
                    for (server, o) in &r.observations {
                        let before = cv
                            .gateways
                            .get(gw)
                            .and_then(|p| p.observations.get(server))
                            .is_none_or(|p| p.up);
                        let ours_up = cv.local.get(server).is_none_or(|l| l.up);
                        if !o.up && before && ours_up {
                            suspects.push((
                                server.clone(),
                                format!("gateway {gw} sees it down: {}", o.evidence),
                            ));
                        }
                    }
                }
                cv.gateways = gateways;
                let leads = cv.leads();
                for (server, why) in suspects {
                    if let Some((checker, _)) = self.checkers.get(&server) {
                        checker.suspect(&why);
                    }
                }
                if leads {
                    let _ = self.step(None).await;
                }
            }
            ClusterEvent::State(snap) => self.apply_snapshot(*snap).await,
            ClusterEvent::Entry(entry) => self.apply_entry(&entry).await,
        }
    }
}
