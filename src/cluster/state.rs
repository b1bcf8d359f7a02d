//! The control plane's state machine, pure and sans-IO.
//!
//! It owns the rules: who may claim a session, how replica sets are chosen, how epochs
//! fence stale owners, how disk state is classified. Every replica applies the same
//! committed commands in the same order with the same membership, so [`ClusterState::apply`]
//! must be deterministic: no clocks, no randomness, no hash-map iteration order.
//!
//! It owns no I/O, no async and no openraft types: [`super::store`] feeds it committed
//! entries and the membership they were committed under.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::types::{
    ClusterSessionState, Command, CommandResponse, DiskReport, DiskState, NodeId, SessionEntry,
    Settings,
};

/// Everything the cluster agreed on, as of some applied log index.
///
/// Serialized (snapshots) as [`StoredState`]: the derived lookups are rebuilt on load, not
/// stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredState", into = "StoredState")]
pub struct ClusterState {
    /// Last disk report of each member that reported.
    pub nodes: BTreeMap<NodeId, DiskReport>,
    /// Every session the cluster knows, live or ended, by id. Changed only by [`Self::apply`],
    /// which keeps `live` and `names` in step with it.
    sessions: BTreeMap<String, SessionEntry>,
    pub settings: Settings,
    /// Ids of the live sessions. `sessions` grows with every recording ever made, while
    /// each claim (replica load) and the orphan sweep only look at live ones: without this
    /// they would scan the whole history, on every node, for every claim.
    live: BTreeSet<String>,
    /// `(node dir, file name)` of every session: the set-wide unique-name check of a claim,
    /// in O(log n) instead of a scan of the history.
    names: BTreeSet<(String, String)>,
}

/// What a snapshot holds of a [`ClusterState`] (same fields, same order as before the
/// derived lookups existed, so older snapshots still load).
#[derive(Clone, Serialize, Deserialize)]
struct StoredState {
    nodes: BTreeMap<NodeId, DiskReport>,
    sessions: BTreeMap<String, SessionEntry>,
    settings: Settings,
}

impl From<StoredState> for ClusterState {
    fn from(stored: StoredState) -> Self {
        let live = stored
            .sessions
            .values()
            .filter(|s| s.state == ClusterSessionState::Live)
            .map(|s| s.id.clone())
            .collect();
        let names = stored.sessions.values().map(name_of).collect();
        ClusterState {
            nodes: stored.nodes,
            sessions: stored.sessions,
            settings: stored.settings,
            live,
            names,
        }
    }
}

impl From<ClusterState> for StoredState {
    fn from(state: ClusterState) -> Self {
        StoredState {
            nodes: state.nodes,
            sessions: state.sessions,
            settings: state.settings,
        }
    }
}

/// Whether `claim` is a repeat of the claim that created `existing`: same owner and
/// recording, and nothing happened to the session since (still live at epoch 1).
fn same_claim(existing: &SessionEntry, claim: &SessionEntry) -> bool {
    existing.state == ClusterSessionState::Live
        && existing.epoch == 1
        && existing.owner == claim.owner
        && existing.node_dir == claim.node_dir
        && existing.file_name == claim.file_name
        && existing.started_at_ms == claim.started_at_ms
}

fn name_of(session: &SessionEntry) -> (String, String) {
    (session.node_dir.clone(), session.file_name.clone())
}

/// Start of the rejection reason of a claim whose recording name another session holds;
/// the claimant retries with the next name.
pub const NAME_TAKEN: &str = "file name taken";
/// Start of the rejection of a claim whose session id the set already has.
pub const SESSION_EXISTS: &str = "session already exists";

/// Internal result of one rule: the reply, or the reason for a rejection.
type Outcome = Result<CommandResponse, String>;

impl ClusterState {
    /// Applies one committed command. `members` are the voters and learners of the
    /// membership in effect at this log position. A rejected command changes nothing.
    pub fn apply(&mut self, cmd: &Command, members: &BTreeSet<NodeId>) -> CommandResponse {
        if let Command::Batch(commands) = cmd {
            let answers = commands
                .iter()
                .map(|c| match c {
                    Command::Batch(_) => CommandResponse::Rejected {
                        reason: "nested batch".into(),
                    },
                    c => self.apply(c, members),
                })
                .collect();
            return CommandResponse::Batch(answers);
        }
        let outcome = match cmd {
            Command::ReportDisk { node, report } => self.report_disk(*node, report, members),
            Command::ClaimSession {
                id,
                owner,
                node_dir,
                file_name,
                started_at_ms,
                up,
            } => self.claim(
                SessionEntry {
                    id: id.clone(),
                    owner: *owner,
                    epoch: 1,
                    replicas: Vec::new(),
                    state: ClusterSessionState::Live,
                    node_dir: node_dir.clone(),
                    file_name: file_name.clone(),
                    started_at_ms: *started_at_ms,
                },
                up,
                members,
            ),
            Command::TakeOver {
                id,
                new_owner,
                from_epoch,
                up,
            } => self.take_over(id, *new_owner, *from_epoch, up, members),
            Command::EndSession { id, state, epoch } => self.end(id, *state, *epoch),
            Command::SetSettings(settings) => self.set_settings(settings),
            Command::ForgetEnded { started_before_ms } => Ok(self.forget_ended(*started_before_ms)),
            Command::Batch(_) => Err("unreachable: batches are applied above".into()),
        };
        outcome.unwrap_or_else(|reason| CommandResponse::Rejected { reason })
    }

    /// Drops disk reports of nodes that left the membership, so that a removed node's
    /// stale report neither lingers nor counts when it rejoins.
    pub fn retain_members(&mut self, members: &BTreeSet<NodeId>) {
        self.nodes.retain(|node, _| members.contains(node));
    }

    /// Sessions still accepting bytes, by id.
    pub fn live_sessions(&self) -> impl Iterator<Item = &SessionEntry> {
        self.live.iter().filter_map(|id| self.sessions.get(id))
    }

    /// Every session the cluster knows, live or ended, by id.
    pub fn sessions(&self) -> &BTreeMap<String, SessionEntry> {
        &self.sessions
    }

    /// Sessions whose current (or, once ended, last) owner is `node`, in any state.
    pub fn sessions_owned_by(&self, node: NodeId) -> impl Iterator<Item = &SessionEntry> {
        self.sessions.values().filter(move |s| s.owner == node)
    }

    pub fn session(&self, id: &str) -> Option<&SessionEntry> {
        self.sessions.get(id)
    }

    /// A node's last reported disk state; a node that never reported counts as `Ok`
    /// (a node that just joined must be usable before its first report lands).
    pub fn disk_state(&self, node: NodeId) -> DiskState {
        self.nodes.get(&node).map_or(DiskState::Ok, |r| r.state)
    }

    /// Number of live sessions each node holds a replica of (owner included).
    pub fn replica_load(&self) -> BTreeMap<NodeId, usize> {
        let mut load = BTreeMap::new();
        for session in self.live_sessions() {
            for node in &session.replicas {
                *load.entry(*node).or_insert(0) += 1;
            }
        }
        load
    }

    fn report_disk(
        &mut self,
        node: NodeId,
        report: &DiskReport,
        members: &BTreeSet<NodeId>,
    ) -> Outcome {
        if !members.contains(&node) {
            return Err(format!("node {node} is not a member"));
        }
        self.nodes.insert(node, report.clone());
        Ok(CommandResponse::Ok)
    }

    /// `entry` comes with everything but its replica set.
    fn claim(
        &mut self,
        mut entry: SessionEntry,
        up: &[NodeId],
        members: &BTreeSet<NodeId>,
    ) -> Outcome {
        if entry.id.is_empty() {
            return Err("empty session id".into());
        }
        if let Some(existing) = self.sessions.get(&entry.id) {
            // A retried proposal (its first forward timed out after the leader had it)
            // gets the answer the first one got, instead of a refusal of a session this
            // very node holds.
            if !same_claim(existing, &entry) {
                return Err(format!("{SESSION_EXISTS}: {}", entry.id));
            }
            return Ok(CommandResponse::Claimed {
                epoch: existing.epoch,
                replicas: existing.replicas.clone(),
            });
        }
        let owner = entry.owner;
        if !members.contains(&owner) {
            return Err(format!("owner {owner} is not a member"));
        }
        let disk = self.disk_state(owner);
        if disk != DiskState::Ok {
            return Err(format!("owner {owner} disk is {disk:?}"));
        }
        // Every replica stores the recording at the same path: a name must be unique in
        // the whole set, not only on the node that picked it.
        let name = name_of(&entry);
        if self.names.contains(&name) {
            return Err(format!(
                "{NAME_TAKEN}: {}/{}",
                entry.node_dir, entry.file_name
            ));
        }
        entry.replicas = self.pick_replicas(owner, up, members);
        let reply = CommandResponse::Claimed {
            epoch: entry.epoch,
            replicas: entry.replicas.clone(),
        };
        self.names.insert(name);
        self.live.insert(entry.id.clone());
        self.sessions.insert(entry.id.clone(), entry);
        Ok(reply)
    }

    /// Owner first, then up to `replication_factor - 1` reachable members with an `Ok`
    /// disk, least loaded first (ties by id). Fewer when fewer qualify: the factor is
    /// "3, or every node when fewer".
    fn pick_replicas(
        &self,
        owner: NodeId,
        up: &[NodeId],
        members: &BTreeSet<NodeId>,
    ) -> Vec<NodeId> {
        let wanted = self.settings.replication_factor.saturating_sub(1);
        let load = self.replica_load();
        // Through a set: `up` comes from the leader and may repeat a node.
        let eligible: BTreeSet<NodeId> = up
            .iter()
            .copied()
            .filter(|n| *n != owner && members.contains(n))
            .filter(|n| self.disk_state(*n) == DiskState::Ok)
            .collect();
        let mut ranked: Vec<(usize, NodeId)> = eligible
            .into_iter()
            .map(|n| (load.get(&n).copied().unwrap_or(0), n))
            .collect();
        ranked.sort_unstable();
        std::iter::once(owner)
            .chain(ranked.into_iter().take(wanted).map(|(_, n)| n))
            .collect()
    }

    /// Failover: the epoch goes up by one, `new_owner` leads the replica set, and the
    /// old replicas that survive (members, reachable, not full) stay. No replica is
    /// added here: bringing the set back to the factor is a separate decision.
    fn take_over(
        &mut self,
        id: &str,
        new_owner: NodeId,
        from_epoch: u64,
        up: &[NodeId],
        members: &BTreeSet<NodeId>,
    ) -> Outcome {
        if !members.contains(&new_owner) {
            return Err(format!("new owner {new_owner} is not a member"));
        }
        let disk = |n: NodeId| self.disk_state(n);
        let Some(session) = self.sessions.get(id) else {
            return Err(format!("no session {id}"));
        };
        if session.state != ClusterSessionState::Live {
            return Err(format!(
                "session {id} is {}, not live",
                session.state.as_str()
            ));
        }
        if session.owner == new_owner && session.epoch == from_epoch.saturating_add(1) {
            // A retried takeover whose first proposal was applied: the same answer again.
            return Ok(CommandResponse::Claimed {
                epoch: session.epoch,
                replicas: session.replicas.clone(),
            });
        }
        if session.epoch != from_epoch {
            return Err(format!(
                "session {id} is at epoch {}, not {from_epoch}",
                session.epoch
            ));
        }
        let Some(epoch) = session.epoch.checked_add(1) else {
            return Err(format!("session {id} epoch exhausted"));
        };
        // Keep the old replicas (a dead one catches up when it returns and counts
        // towards the majority the new owner needs, exactly as before the takeover).
        let mut others: Vec<NodeId> = session
            .replicas
            .iter()
            .copied()
            .filter(|n| *n != new_owner && members.contains(n))
            .filter(|n| disk(*n) != DiskState::Full)
            .collect();
        let room = self.settings.replication_factor.max(1) - 1;
        while others.len() > room {
            // Drop an unreachable replica first, else the last one.
            let drop_at = others
                .iter()
                .rposition(|n| !up.contains(n))
                .unwrap_or(others.len() - 1);
            others.remove(drop_at);
        }
        let replicas: Vec<NodeId> = std::iter::once(new_owner).chain(others).collect();
        let reply = CommandResponse::Claimed {
            epoch,
            replicas: replicas.clone(),
        };
        if let Some(session) = self.sessions.get_mut(id) {
            session.owner = new_owner;
            session.epoch = epoch;
            session.replicas = replicas;
        }
        Ok(reply)
    }

    /// Fencing: only the owner at the current epoch may end a session. Ending again in
    /// the same state is accepted (a retried proposal), in another state is not.
    fn end(&mut self, id: &str, state: ClusterSessionState, epoch: u64) -> Outcome {
        if state == ClusterSessionState::Live {
            return Err("a session cannot be ended as live".into());
        }
        let Some(session) = self.sessions.get_mut(id) else {
            return Err(format!("no session {id}"));
        };
        if epoch != session.epoch {
            return Err(format!(
                "stale epoch {epoch} for session {id}, current is {}",
                session.epoch
            ));
        }
        match session.state {
            ClusterSessionState::Live => {
                session.state = state;
                self.live.remove(id);
                Ok(CommandResponse::Ok)
            }
            current if current == state => Ok(CommandResponse::Ok),
            current => Err(format!(
                "session {id} already ended as {}",
                current.as_str()
            )),
        }
    }

    fn set_settings(&mut self, settings: &Settings) -> Outcome {
        settings.validate()?;
        self.settings = settings.clone();
        Ok(CommandResponse::Ok)
    }

    /// Removes every ended session started before the cutoff, with its name. Live
    /// sessions stay whatever their age. One pass over the table, in key order.
    fn forget_ended(&mut self, started_before_ms: i64) -> CommandResponse {
        let names = &mut self.names;
        let before = self.sessions.len();
        self.sessions.retain(|_, s| {
            let forget = is_ended_before(s, started_before_ms);
            if forget {
                names.remove(&name_of(s));
            }
            !forget
        });
        CommandResponse::Forgotten {
            sessions: (before - self.sessions.len()) as u64,
        }
    }

    /// Whether a [`Command::ForgetEnded`] at this cutoff would remove anything (so the
    /// leader proposes one only then).
    pub fn has_ended_before(&self, started_before_ms: i64) -> bool {
        self.sessions
            .values()
            .any(|s| is_ended_before(s, started_before_ms))
    }
}

fn is_ended_before(session: &SessionEntry, started_before_ms: i64) -> bool {
    session.state != ClusterSessionState::Live && session.started_at_ms < started_before_ms
}

/// A node's disk state from its free and total bytes, with hysteresis so that a node
/// hovering around the mark does not flap:
///
/// - `Full` at or above `full_used_percent` used;
/// - from `Ok`, `Pressure` at or above `pressure_used_percent` used, or with less than
///   `pressure_min_free_bytes` free;
/// - from `Pressure`/`Full`, back to `Ok` only below `clear_used_percent` used with at
///   least `pressure_min_free_bytes` free, else `Pressure`.
///
/// A zero total (nothing usable, or a bogus measurement) is `Full`.
pub fn classify(
    settings: &Settings,
    previous: DiskState,
    free_bytes: u64,
    total_bytes: u64,
) -> DiskState {
    if total_bytes == 0 {
        return DiskState::Full;
    }
    let free = free_bytes.min(total_bytes);
    let used = total_bytes - free;
    // used/total >= pct/100, in integers wide enough not to overflow.
    let used_at_least =
        |pct: u8| u128::from(used) * 100 >= u128::from(pct) * u128::from(total_bytes);
    let low_free = free < settings.pressure_min_free_bytes;
    if used_at_least(settings.full_used_percent) {
        return DiskState::Full;
    }
    let pressed = match previous {
        DiskState::Ok => used_at_least(settings.pressure_used_percent) || low_free,
        DiskState::Pressure | DiskState::Full => {
            used_at_least(settings.clear_used_percent) || low_free
        }
    };
    if pressed {
        DiskState::Pressure
    } else {
        DiskState::Ok
    }
}

#[cfg(test)]
mod tests;
