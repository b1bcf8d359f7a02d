//! The orphan sweeper: nothing stays live forever.
//!
//! A live session whose owner is silent (no replication frames) and which no client has
//! resumed is adopted by one of its replicas after `orphan_timeout` (staggered by the
//! replica's position in the set so that they don't race; Raft's conditional takeover
//! settles any race anyway) and sealed at the longest durable prefix of a majority, with
//! the cluster state `orphaned`. A session this node owns but no longer streams (it
//! restarted) is adopted the same way.
//!
//! Before adopting, it asks the owner (or itself, as the owner) whether it sealed the
//! recording: an owner whose clean end could not reach Raft (an election or a lost quorum
//! outlasted its retries) holds a `complete` or `invalid` recording that every replica got
//! the seal of. Its end is then recorded as it was, not sealed a second time as cut.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::copies::Copies;
use super::repair::{read_finished, FinishedChunk, RepairError};
use crate::cluster::admission::{cluster_end_state, late_end};
use crate::cluster::member::Member;
use crate::cluster::network::{ClusterRequest, ClusterResponse};
use crate::cluster::types::{ClusterSessionState, Command, CommandResponse, NodeId};
use crate::session::SessionManager;
use crate::storage::index::SessionState;

const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Extra wait per position in the replica set, so the first survivor usually goes alone.
const STAGGER: Duration = Duration::from_secs(1);

pub async fn sweep(
    member: Arc<Member>,
    copies: Arc<Copies>,
    sessions: Arc<SessionManager>,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut suspicions = Suspicions::new(timeout);
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let seen = observe(&member, &copies, &sessions);
        for (id, epoch) in suspicions.due(Instant::now(), seen) {
            // This node's view (no replication stream) is not proof: ask the owner itself.
            match owner_view(&member, &copies, &id, epoch).await {
                OwnerView::Streams => {
                    suspicions.cleared(&id);
                    continue;
                }
                // A busy (or frozen) owner: ask again at the next sweep, and only give up
                // on it after a long silence.
                OwnerView::NoAnswer if !suspicions.long_silent(&id, Instant::now()) => continue,
                OwnerView::Finished(state) => {
                    // The owner's own retry may have recorded it meanwhile.
                    if still_orphan(&member, &sessions, &id, epoch) {
                        record_owners_end(&member, &id, epoch, state).await;
                    }
                    suspicions.cleared(&id);
                    continue;
                }
                OwnerView::Gone | OwnerView::NoAnswer => {}
            }
            // The owner check took time: a client may have resumed the session meanwhile
            // (here or elsewhere). Adopt only what is still exactly as it was judged.
            if still_orphan(&member, &sessions, &id, epoch) {
                adopt(&sessions, &id).await;
            }
            suspicions.cleared(&id);
        }
    }
}

/// What this node sees of one live session it keeps a copy of.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: String,
    /// The session's fencing epoch: a takeover (by anyone) restarts the suspicion.
    epoch: u64,
    /// Position in the replica set: later replicas wait longer, so they rarely race.
    rank: usize,
    /// How long its owner has been silent to this node, when this node can tell: `Some(0)`
    /// while it streams here (or is arriving here), the age of the last replication frame
    /// for a copy, `None` when there is no evidence either way (no copy since a restart,
    /// or this node is the owner and doesn't stream it).
    silent_for: Option<Duration>,
}

fn observe(member: &Member, copies: &Copies, sessions: &SessionManager) -> Vec<Seen> {
    let entries: Vec<(String, u64, u64, usize)> = member.state.read(|s| {
        s.live_sessions()
            .filter_map(|e| {
                let rank = e.replicas.iter().position(|r| *r == member.id)?;
                Some((e.id.clone(), e.owner, e.epoch, rank))
            })
            .collect()
    });
    entries
        .into_iter()
        .map(|(id, owner, epoch, rank)| {
            let silent_for = if sessions.is_here(&id) {
                Some(Duration::ZERO)
            } else if owner == member.id {
                None
            } else {
                copies.get(&id).map(|c| c.since_owner_contact())
            };
            Seen {
                id,
                epoch,
                rank,
                silent_for,
            }
        })
        .collect()
}

/// Whether `id` is still live at `epoch` and not arriving or streaming here.
fn still_orphan(member: &Member, sessions: &SessionManager, id: &str, epoch: u64) -> bool {
    let current = member.state.read(|s| {
        s.session(id)
            .filter(|e| e.state == ClusterSessionState::Live)
            .map(|e| e.epoch)
    });
    current == Some(epoch) && !sessions.is_here(id)
}

/// Sans-IO bookkeeping of which sessions look orphaned, and since when.
///
/// A suspicion starts when a session is first seen without any sign of life and lasts only
/// while that stays true at the same epoch: any sign of life, or a takeover, clears it.
/// (An older version kept the first timestamp forever, so a node that once suspected a
/// session adopted it, much later, from under a client that had just resumed it there.)
struct Suspicions {
    timeout: Duration,
    /// Session id → (epoch, first sweep that saw it without a sign of life).
    since: HashMap<String, (u64, Instant)>,
}

impl Suspicions {
    fn new(timeout: Duration) -> Self {
        Suspicions {
            timeout,
            since: HashMap::new(),
        }
    }

    /// Updates the suspicions from one sweep's view; returns `(id, epoch)` of the sessions
    /// that have been silent long enough to ask their owner.
    fn due(&mut self, now: Instant, seen: Vec<Seen>) -> Vec<(String, u64)> {
        self.since.retain(|id, _| seen.iter().any(|s| &s.id == id));
        let mut due = Vec::new();
        for s in seen {
            let patience = self.timeout + STAGGER * s.rank as u32;
            if s.silent_for.is_some_and(|silent| silent < patience) {
                self.since.remove(&s.id);
                continue;
            }
            let entry = self.since.entry(s.id.clone()).or_insert((s.epoch, now));
            if entry.0 != s.epoch {
                *entry = (s.epoch, now);
            }
            // Both this node's suspicion and the evidence (a copy's last frame, if any)
            // must be as old as the patience: a fresh epoch always waits it out in full.
            let suspected_for = now.saturating_duration_since(entry.1);
            if s.silent_for.unwrap_or(Duration::MAX).min(suspected_for) >= patience {
                due.push((s.id, s.epoch));
            }
        }
        due
    }

    /// Whether `id` has been suspected for so long that an owner that never answers is
    /// taken as gone.
    fn long_silent(&self, id: &str, now: Instant) -> bool {
        self.since
            .get(id)
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) >= self.timeout * 3)
    }

    fn cleared(&mut self, id: &str) {
        self.since.remove(id);
    }
}

/// How long the owner has to answer whether it still streams a session.
const OWNER_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What the session's owner says about it.
enum OwnerView {
    /// The owner answered and streams it.
    Streams,
    /// The owner is not a member, refuses connections, or neither streams nor sealed it
    /// (for this node as the owner: a restart cut it).
    Gone,
    /// The owner didn't answer in time.
    NoAnswer,
    /// The owner (maybe this node) sealed the recording, in this state: the session ended
    /// there but its end never reached Raft (no quorum until the owner gave up, or the
    /// owner stopped first). Raft gets that end, not a second seal by an adopter.
    Finished(SessionState),
}

async fn owner_view(member: &Member, copies: &Copies, id: &str, epoch: u64) -> OwnerView {
    let Some(owner) = member.state.read(|s| s.session(id).map(|e| e.owner)) else {
        return OwnerView::Gone;
    };
    if owner == member.id {
        // This node owns it and does not stream it (the sweep checked): it sealed it
        // here, or a restart cut it.
        return match read_finished(copies.storage(), id, 0, 0).await {
            Ok(chunk) => sealed_at(&chunk, epoch).map_or(OwnerView::Gone, OwnerView::Finished),
            Err(RepairError::NotFinished(_)) => OwnerView::Gone,
            // This node's own storage trouble: judge again at the next sweep.
            Err(_) => OwnerView::NoAnswer,
        };
    }
    let Some(addr) = member.members().get(&owner).map(|n| n.ingest_addr.clone()) else {
        return OwnerView::Gone;
    };
    let path = "/api/v1/sessions?state=live";
    match tokio::time::timeout(OWNER_CHECK_TIMEOUT, crate::admin::get(&addr, path)).await {
        Ok(Ok(serde_json::Value::Array(records))) if records.iter().any(|r| r["id"] == id) => {
            tracing::debug!(%id, owner, "owner still streams the session; not an orphan");
            OwnerView::Streams
        }
        Ok(Ok(_)) => owner_finished(member, owner, id, epoch).await,
        Ok(Err(_)) => OwnerView::Gone,
        Err(_) => OwnerView::NoAnswer,
    }
}

/// Whether the owner sealed `id` at `epoch` (asked like a late copy's repair asks a peer,
/// for no bytes). Only a sealed end counts ([`sealed_at`]): an `aborted` copy on the owner
/// is a cut stream the owner left live for the client to resume, which is the sweeper's to
/// seal. A call that fails is no answer, not a verdict: right after a partition heals the
/// first calls may fail while connections are redialled.
async fn owner_finished(member: &Member, owner: NodeId, id: &str, epoch: u64) -> OwnerView {
    let Some(addr) = member.members().get(&owner).map(|n| n.cluster_addr.clone()) else {
        return OwnerView::Gone;
    };
    let request = ClusterRequest::ReadFinished {
        session: id.to_string(),
        from: 0,
        max: 0,
    };
    match member
        .call(owner, &addr, &request, OWNER_CHECK_TIMEOUT)
        .await
    {
        Ok(ClusterResponse::Finished(Ok(chunk))) => {
            sealed_at(&chunk, epoch).map_or(OwnerView::Gone, OwnerView::Finished)
        }
        Ok(ClusterResponse::Finished(Err(_))) => OwnerView::Gone,
        Ok(_) | Err(_) => OwnerView::NoAnswer,
    }
}

/// The chunk's state if it is one a session is sealed in by its own owner, at `epoch`.
fn sealed_at(chunk: &FinishedChunk, epoch: u64) -> Option<SessionState> {
    let sealed = matches!(chunk.state, SessionState::Complete | SessionState::Invalid);
    (sealed && chunk.epoch == epoch).then_some(chunk.state)
}

/// Records in Raft the end the owner gave the session, at the epoch it was judged at (a
/// takeover or a resume since then makes Raft refuse it).
async fn record_owners_end(member: &Member, id: &str, epoch: u64, state: SessionState) {
    let command = Command::EndSession {
        id: id.to_string(),
        state: cluster_end_state(state, false),
        epoch,
    };
    match member.propose(command).await {
        Ok(CommandResponse::Rejected { reason }) => {
            tracing::info!(%id, %reason, "the owner's end of a silent session was refused");
        }
        Ok(_) => {
            late_end("from_owner");
            tracing::warn!(%id, state = state.as_str(),
                "recorded the end of a session its owner finished but never recorded");
        }
        Err(e) => tracing::info!(%id, error = %e, "could not record the owner's end yet"),
    }
}

async fn adopt(sessions: &Arc<SessionManager>, id: &str) {
    match sessions.adopt_orphan(id).await {
        Ok(session) => {
            let outcome = session
                .run(futures_util::stream::empty::<Result<bytes::Bytes, String>>())
                .await;
            tracing::warn!(%id, bytes = outcome.record.bytes, "sealed an orphaned session (owner and client gone)");
        }
        Err(e) => tracing::info!(%id, reason = %e, "orphaned session not adopted (yet)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn seen(epoch: u64, rank: usize, silent_for: Option<Duration>) -> Vec<Seen> {
        vec![Seen {
            id: "s".into(),
            epoch,
            rank,
            silent_for,
        }]
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn an_owner_that_does_not_stream_is_due_after_the_timeout() {
        let t0 = Instant::now();
        let mut s = Suspicions::new(TIMEOUT);
        assert!(s.due(t0, seen(1, 0, None)).is_empty());
        assert!(s.due(t0 + secs(29), seen(1, 0, None)).is_empty());
        assert_eq!(
            s.due(t0 + secs(30), seen(1, 0, None)),
            vec![("s".into(), 1)]
        );
    }

    #[test]
    fn later_replicas_wait_longer() {
        let t0 = Instant::now();
        let mut s = Suspicions::new(TIMEOUT);
        s.due(t0, seen(1, 2, Some(secs(0))));
        s.due(t0 + secs(1), seen(1, 2, Some(secs(60))));
        assert!(s.due(t0 + secs(31), seen(1, 2, Some(secs(90)))).is_empty());
        assert_eq!(s.due(t0 + secs(33), seen(1, 2, Some(secs(92)))).len(), 1);
    }

    /// Regression (chaos-tests rolling-restart, seed 9001): a node suspected a session
    /// right after its restart, the session then lived elsewhere for a minute, and when
    /// its client resumed it on this node the sweeper adopted it at once (the suspicion
    /// kept its first timestamp) and sealed it under the client as `orphaned`.
    #[test]
    fn a_sign_of_life_or_a_takeover_restarts_the_suspicion() {
        let t0 = Instant::now();
        let mut s = Suspicions::new(TIMEOUT);
        // Just restarted: the stale state says this node owns it, nothing streams.
        assert!(s.due(t0, seen(3, 0, None)).is_empty());
        // Owned elsewhere and streaming to this node's copy for a minute.
        for n in 1..60 {
            assert!(s.due(t0 + secs(n), seen(4, 0, Some(secs(0)))).is_empty());
        }
        // A client resumes here: the takeover is in flight (not live yet) at a new epoch.
        assert!(s.due(t0 + secs(61), seen(5, 0, None)).is_empty());
        assert!(s.due(t0 + secs(80), seen(5, 0, None)).is_empty());
        // A new epoch without any sign of life in between also starts over.
        assert!(s.due(t0 + secs(90), seen(6, 0, None)).is_empty());
        assert!(s.due(t0 + secs(119), seen(6, 0, None)).is_empty());
        assert_eq!(s.due(t0 + secs(120), seen(6, 0, None)).len(), 1);
    }

    #[test]
    fn a_copy_that_heard_from_its_owner_recently_is_not_due() {
        let t0 = Instant::now();
        let mut s = Suspicions::new(TIMEOUT);
        s.due(t0, seen(1, 0, Some(secs(40))));
        assert!(s.due(t0 + secs(40), seen(1, 0, Some(secs(1)))).is_empty());
        // ...and the next silence is measured from scratch.
        assert!(s.due(t0 + secs(41), seen(1, 0, Some(secs(31)))).is_empty());
        assert_eq!(s.due(t0 + secs(71), seen(1, 0, Some(secs(61)))).len(), 1);
    }

    #[test]
    fn an_owner_that_never_answers_is_taken_as_gone_only_after_three_timeouts() {
        let t0 = Instant::now();
        let mut s = Suspicions::new(TIMEOUT);
        s.due(t0, seen(1, 0, None));
        assert!(!s.long_silent("s", t0 + secs(89)));
        assert!(s.long_silent("s", t0 + secs(90)));
        s.cleared("s");
        assert!(!s.long_silent("s", t0 + secs(90)));
    }

    #[test]
    fn only_an_owners_seal_at_the_judged_epoch_is_its_end() {
        let chunk = |state, epoch| FinishedChunk {
            bytes: Vec::new(),
            len: 10,
            state,
            problem: None,
            epoch,
        };
        let complete = SessionState::Complete;
        assert_eq!(sealed_at(&chunk(complete, 2), 2), Some(complete));
        let invalid = SessionState::Invalid;
        assert_eq!(sealed_at(&chunk(invalid, 2), 2), Some(invalid));
        // Sealed at another epoch: someone took the session over since.
        assert_eq!(sealed_at(&chunk(complete, 1), 2), None);
        // A cut stream the owner left for the client to resume is the sweeper's to seal.
        assert_eq!(sealed_at(&chunk(SessionState::Aborted, 2), 2), None);
        assert_eq!(sealed_at(&chunk(SessionState::Live, 2), 2), None);
    }

    #[test]
    fn sessions_that_are_no_longer_live_are_forgotten() {
        let t0 = Instant::now();
        let mut s = Suspicions::new(TIMEOUT);
        s.due(t0, seen(1, 0, None));
        s.due(t0 + secs(1), Vec::new());
        assert!(s.due(t0 + secs(31), seen(1, 0, None)).is_empty());
    }
}
