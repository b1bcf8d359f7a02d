//! Late copies: a replica that was away when its session ended gets the rest of the
//! recording from a peer that holds it finished, so that every replica ends with the
//! whole sealed recording.
//!
//! The owner streams to a missing replica while the session lives and for
//! [`SEAL_STRAGGLERS`] after it ends. A replica that comes back later is in one of three
//! states, while Raft says the session ended:
//! - it restarted: startup recovery marked its copy `aborted` ([`STOPPED_WHILE_LIVE`]);
//! - it was cut off (partition, `SIGSTOP`) but kept running: its copy is still open,
//!   waiting for an owner that stopped offering the seal ("stranded");
//! - it never heard of the session: no copy at all.
//!
//! This module looks for all three, twice soon after start (Raft has to catch up first)
//! and then every [`PASS_EVERY`]. For each, it reads the missing bytes from the other
//! replicas (owner first) that finished it at the session's last epoch, with
//! [`ClusterRequest::ReadFinished`], appends them (through the
//! open copy when there is one, so its fence and offset checks still hold against a late
//! frame from the owner), makes them durable and marks the copy with the final state the
//! peer holds.
//!
//! It owns that pull, the peer's answer ([`read_finished`]) and the memory of which
//! sessions need nothing more ([`Repairs::settled`]). It does not own live copies
//! ([`super::copies`]) nor takeovers: only sessions Raft has ended are repaired.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::copies::{Copies, Copy, CopyError};
use super::wire::MAX_CHUNK;
use super::SEAL_STRAGGLERS;
use crate::asciicast::Problem;
use crate::cluster::member::Member;
use crate::cluster::network::{ClusterRequest, ClusterResponse};
use crate::cluster::types::{ClusterSessionState, NodeId, SessionEntry};
use crate::storage::index::{SessionRecord, SessionState};
use crate::storage::{RecordingFile, Storage, StorageError, STOPPED_WHILE_LIVE};

/// When, after start, to look first: Raft must have applied the sessions that ended while
/// this node was away, which takes a heartbeat or a snapshot.
const FIRST_PASSES: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(5)];
/// Then how often to look again: a node cut off without a restart only learns that its
/// sessions ended when it is back in touch, at no particular time.
const PASS_EVERY: Duration = Duration::from_secs(10);
/// An open copy of an ended session whose owner has been silent this long is stranded:
/// the owner offers the seal for [`SEAL_STRAGGLERS`] only, so nothing else will end it.
const STRANDED_AFTER: Duration = SEAL_STRAGGLERS.saturating_add(Duration::from_secs(5));
/// Sessions read from the Raft state per read lock, so that a pass over a long history
/// never holds up the apply of new entries for long.
const SCAN_BATCH: usize = 1024;
/// First wait before retrying a copy that no peer could complete; doubles up to
/// [`RETRY_MAX`], so a copy nobody holds costs a few RPCs an hour, not every pass. The
/// first retry comes one pass later: a copy found stranded right after a partition heals
/// may fail once while the connections to its peers are redialled, and should not stay
/// incomplete for long because of that.
const RETRY_FIRST: Duration = PASS_EVERY;
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// Every this many passes (10 minutes), the ids the leader's clean-up removed from the
/// Raft table (`forget_ended_after_secs`) are dropped from [`Repairs::settled`] and the
/// retry list too, so that they stay as bounded as the table.
const PRUNE_EVERY_PASSES: u64 = 60;
/// One read of a peer's recording.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("no finished recording of {0} here")]
    NotFinished(String),
    #[error("the recording is {have} bytes here, more than the {len} a peer finished with")]
    Longer { have: u64, len: u64 },
    #[error("peer {peer}: {reason}")]
    Peer { peer: NodeId, reason: String },
    #[error("no peer could give the rest of the recording")]
    NoPeer,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Copy(#[from] CopyError),
}

/// A piece of a finished recording, with what the peer knows of its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishedChunk {
    /// Up to the asked maximum, from the asked offset.
    pub bytes: Vec<u8>,
    /// The finished recording's length.
    pub len: u64,
    pub state: SessionState,
    pub problem: Option<Problem>,
    /// The epoch the peer's record was finished at: the orphan sweeper records an owner's
    /// end only at the epoch it judged. (Added after `6f795ad`: a node of that build
    /// cannot decode this answer, nor a node of this one its answer, so repairs and
    /// sweeps between such nodes fail until both run one build, which they retry.)
    pub epoch: u64,
}

/// Whether this node's record says its copy is whole: ended by a seal (or by its own
/// session), not cut by a stop of this node.
fn is_finished(record: &SessionRecord) -> bool {
    record.state != SessionState::Live
        && record
            .problem
            .as_ref()
            .is_none_or(|p| p.reason != STOPPED_WHILE_LIVE)
}

/// Whether this node's copy is the session's end: finished, at the epoch Raft ended it.
/// A copy finished at an older epoch is an earlier owner's end of its own stream (this
/// node owned the session, was replaced while cut off, and sealed what it had when its
/// client left); it is completed from a peer like a cut one.
fn is_final(record: &SessionRecord, epoch: u64) -> bool {
    is_finished(record) && record.epoch >= epoch
}

/// The peer side: bytes `[from, from + max)` of a recording this node holds finished.
pub async fn read_finished(
    storage: &Storage,
    session: &str,
    from: u64,
    max: u32,
) -> Result<FinishedChunk, RepairError> {
    let record = storage
        .get_record(session)
        .await?
        .filter(is_finished)
        .ok_or_else(|| RepairError::NotFinished(session.to_string()))?;
    let want = record.bytes.saturating_sub(from).min(u64::from(max)) as usize;
    let bytes = storage.read_recording(&record.path, from, want).await?;
    // A probe for no bytes (the orphan sweeper's) still checks that the file holds what
    // its record says.
    let last = record.bytes.checked_sub(1).filter(|_| want == 0);
    let short = match last {
        Some(at) => storage
            .read_recording(&record.path, at, 1)
            .await?
            .is_empty(),
        None => bytes.len() < want,
    };
    if short {
        return Err(RepairError::NotFinished(format!(
            "{session}: the file is shorter than its record's {} bytes",
            record.bytes
        )));
    }
    Ok(FinishedChunk {
        bytes,
        len: record.bytes,
        state: record.state,
        problem: record.problem,
        epoch: record.epoch,
    })
}

/// Looks for late copies after start and then for as long as the node runs.
pub async fn run(member: Arc<Member>, copies: Arc<Copies>, shutdown: CancellationToken) {
    let started = Instant::now();
    let mut repairs = Repairs::new(member, copies);
    let mut at = FIRST_PASSES
        .iter()
        .map(|d| started + *d)
        .collect::<Vec<_>>();
    at.reverse();
    loop {
        let next = at.pop().unwrap_or_else(|| Instant::now() + PASS_EVERY);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let repaired = repairs.pass().await;
        if repaired > 0 {
            tracing::info!(repaired, "repaired late copies of ended sessions");
        }
    }
}

/// What the passes remember between them.
pub struct Repairs {
    member: Arc<Member>,
    copies: Arc<Copies>,
    /// Ended sessions whose copy here needs nothing more: found finished, repaired, or
    /// beyond repair (longer here than on the peers). Without it every pass would read
    /// the index for every recording ever made; with it a pass reads only new ones. It
    /// is pruned like the Raft session table ([`PRUNE_EVERY_PASSES`]).
    settled: HashSet<String>,
    /// Copies that no peer could complete yet: when to try again and the wait after that.
    retry: HashMap<String, (Instant, Duration)>,
    /// Passes made, for the pruning schedule.
    passes: u64,
}

/// What a pass does with one ended session.
enum Look {
    /// The owner may still seal it: look again later.
    NotYet,
    /// Nothing to do, now or later.
    Settled,
    /// Completed from a peer.
    Repaired(u64),
}

impl Repairs {
    pub fn new(member: Arc<Member>, copies: Arc<Copies>) -> Repairs {
        Repairs {
            member,
            copies,
            settled: HashSet::new(),
            retry: HashMap::new(),
            passes: 0,
        }
    }

    /// Forgets the sessions the Raft table no longer has, looked up [`SCAN_BATCH`] per
    /// read lock.
    fn prune(&mut self) {
        let ids: Vec<String> = self
            .settled
            .iter()
            .chain(self.retry.keys())
            .cloned()
            .collect();
        for chunk in ids.chunks(SCAN_BATCH) {
            let gone: Vec<&String> = self.member.state.read(|s| {
                chunk
                    .iter()
                    .filter(|id| !s.sessions().contains_key(id.as_str()))
                    .collect()
            });
            for id in gone {
                self.settled.remove(id);
                self.retry.remove(id);
            }
        }
    }

    /// One look at every ended session this node should hold a copy of and that is not
    /// settled; returns how many copies it completed.
    pub async fn pass(&mut self) -> usize {
        self.passes += 1;
        if self.passes % PRUNE_EVERY_PASSES == 0 {
            self.prune();
        }
        let mut repaired = 0;
        for entry in self.candidates() {
            match self.look(&entry).await {
                Ok(Look::NotYet) => {}
                Ok(Look::Settled) => {
                    self.settled.insert(entry.id);
                }
                Ok(Look::Repaired(len)) => {
                    metrics::counter!(crate::metrics::COPIES_REPAIRED).increment(1);
                    tracing::info!(session = %entry.id, len, "completed a late copy from a peer");
                    repaired += 1;
                    self.retry.remove(&entry.id);
                    self.settled.insert(entry.id);
                }
                Err(e @ RepairError::Longer { .. }) => {
                    tracing::warn!(session = %entry.id, error = %e, "a late copy cannot be completed");
                    self.settled.insert(entry.id);
                }
                Err(e) => {
                    tracing::warn!(session = %entry.id, error = %e, "could not complete a late copy");
                    self.back_off(entry.id);
                }
            }
        }
        repaired
    }

    fn back_off(&mut self, session: String) {
        let wait = self
            .retry
            .get(&session)
            .map_or(RETRY_FIRST, |(_, wait)| (*wait * 2).min(RETRY_MAX));
        self.retry.insert(session, (Instant::now() + wait, wait));
    }

    /// Ended sessions where this node is a replica but not the owner, not settled and not
    /// waiting for a retry; read in batches of [`SCAN_BATCH`].
    fn candidates(&self) -> Vec<SessionEntry> {
        let me = self.member.id;
        let now = Instant::now();
        let wanted = |e: &SessionEntry| {
            e.state != ClusterSessionState::Live
                && e.owner != me
                && e.replicas.contains(&me)
                && !self.settled.contains(&e.id)
                && self.retry.get(&e.id).is_none_or(|(at, _)| *at <= now)
        };
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let last = self.member.state.read(|s| {
                let from = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                let mut last = None;
                let batch = s.sessions().range::<str, _>((from, Bound::Unbounded));
                for (id, entry) in batch.take(SCAN_BATCH) {
                    if wanted(entry) {
                        found.push(entry.clone());
                    }
                    last = Some(id);
                }
                last.cloned()
            });
            match last {
                Some(id) => after = Some(id),
                None => return found,
            }
        }
    }

    /// Decides about, and if needed repairs, this node's copy of one ended session.
    async fn look(&self, entry: &SessionEntry) -> Result<Look, RepairError> {
        if let Some(copy) = self.copies.get(&entry.id) {
            if copy.since_owner_contact() < STRANDED_AFTER {
                return Ok(Look::NotYet);
            }
            let len = repair_open(&self.member, &self.copies, entry, &copy).await?;
            self.copies.forget(&entry.id);
            return Ok(Look::Repaired(len));
        }
        let record = self.copies.storage().get_record(&entry.id).await?;
        if record.as_ref().is_some_and(|r| is_final(r, entry.epoch)) {
            return Ok(Look::Settled);
        }
        let len = repair_closed(&self.member, self.copies.storage(), entry, record).await?;
        Ok(Look::Repaired(len))
    }
}

/// Completes a copy that is still open (stranded): appends go through the copy, under its
/// fence and offset checks, so a late frame from the owner can neither double nor reorder
/// bytes.
async fn repair_open(
    member: &Arc<Member>,
    copies: &Copies,
    entry: &SessionEntry,
    copy: &Copy,
) -> Result<u64, RepairError> {
    let mut target = Target::Open {
        copy,
        epoch: entry.epoch,
    };
    let end = fetch_from_peers(member, entry, &mut target).await?;
    copy.finish(copies.storage(), entry.epoch, end.len, |record| {
        mark_ended(record, entry, &end)
    })
    .await?;
    Ok(end.len)
}

/// Completes a copy that no stream holds open (after a restart, or never opened).
async fn repair_closed(
    member: &Arc<Member>,
    storage: &Storage,
    entry: &SessionEntry,
    record: Option<SessionRecord>,
) -> Result<u64, RepairError> {
    let mut file = storage.open_copy(&entry.node_dir, &entry.file_name).await?;
    let end = fetch_from_peers(member, entry, &mut Target::Closed(&mut file)).await?;
    storage.sync(&file.sync_handle()).await?;
    let mut record = record.unwrap_or_else(|| {
        SessionRecord::new_live(
            entry.id.clone(),
            entry.node_dir.clone(),
            file.rel_path().to_string(),
            "replica",
        )
    });
    mark_ended(&mut record, entry, &end);
    record.bytes = end.len;
    record.epoch = record.epoch.max(entry.epoch);
    record.ended_at = Some(chrono::Utc::now());
    storage.put_record(record).await?;
    Ok(end.len)
}

/// The end a peer's finished recording has, copied onto this node's record.
fn mark_ended(record: &mut SessionRecord, entry: &SessionEntry, end: &FinishedChunk) {
    record.state = end.state;
    record.problem = end.problem.clone();
    record.replicas = entry.replicas.clone();
}

/// Where fetched bytes go.
enum Target<'a> {
    /// A copy no stream holds: appended at its end.
    Closed(&'a mut RecordingFile),
    /// A copy still open for its owner's stream: appended through it, as the final epoch's
    /// writer.
    Open { copy: &'a Copy, epoch: u64 },
}

impl Target<'_> {
    fn len(&self) -> u64 {
        match self {
            Target::Closed(file) => file.written(),
            Target::Open { copy, .. } => copy.written_now(),
        }
    }

    async fn append(&mut self, offset: u64, bytes: Bytes) -> Result<(), RepairError> {
        match self {
            Target::Closed(file) => file.append(bytes).await?,
            Target::Open { copy, epoch } => {
                copy.append(*epoch, offset, bytes).await?;
            }
        }
        Ok(())
    }
}

/// Fills `target` from the first peer that holds the recording finished (owner first);
/// returns that peer's last answer.
async fn fetch_from_peers(
    member: &Arc<Member>,
    entry: &SessionEntry,
    target: &mut Target<'_>,
) -> Result<FinishedChunk, RepairError> {
    let peers = entry.replicas.iter().copied().filter(|n| *n != member.id);
    for peer in peers {
        let Some(addr) = member.members().get(&peer).map(|n| n.cluster_addr.clone()) else {
            continue;
        };
        match fetch_rest(member, peer, &addr, entry, target).await {
            Ok(end) => return Ok(end),
            // This node's own trouble, or a copy that no peer can fix: stop here.
            Err(
                e @ (RepairError::Longer { .. } | RepairError::Storage(_) | RepairError::Copy(_)),
            ) => return Err(e),
            Err(e) => {
                tracing::debug!(session = %entry.id, peer, error = %e, "peer could not help");
            }
        }
    }
    Err(RepairError::NoPeer)
}

/// Appends what `peer` holds past the copy's end; returns the peer's last answer once the
/// copy is as long as the peer's finished recording.
async fn fetch_rest(
    member: &Arc<Member>,
    peer: NodeId,
    addr: &str,
    entry: &SessionEntry,
    target: &mut Target<'_>,
) -> Result<FinishedChunk, RepairError> {
    loop {
        let from = target.len();
        let chunk = read_from(member, peer, addr, &entry.id, from).await?;
        match next_step(peer, from, &chunk, entry.epoch)? {
            Step::Done => return Ok(chunk),
            Step::Append => target.append(from, Bytes::from(chunk.bytes)).await?,
        }
    }
}

/// What a peer's answer lets the repair do next.
#[derive(Debug, PartialEq)]
enum Step {
    /// The copy is as long as the peer's finished recording.
    Done,
    /// The answer's bytes continue the copy.
    Append,
}

/// Judges one answer for a copy `from` bytes long, of a session Raft ended at `epoch`.
///
/// Only a recording finished at that epoch is the session's end. A peer whose record is
/// from an older epoch holds what an earlier owner had when it was replaced (its own seal
/// of a stream the new owner continued, or a copy that owner's stream left): shorter, and
/// with the wrong end state. Copying it would also make this copy claim the final epoch
/// for it, and serve it as such to the next late replica. Another peer is asked instead,
/// and if none has the final recording the repair is retried later.
fn next_step(
    peer: NodeId,
    from: u64,
    chunk: &FinishedChunk,
    epoch: u64,
) -> Result<Step, RepairError> {
    if chunk.epoch < epoch {
        return Err(RepairError::Peer {
            peer,
            reason: format!(
                "its recording was finished at epoch {}, the session ended at {epoch}",
                chunk.epoch
            ),
        });
    }
    match from.cmp(&chunk.len) {
        Ordering::Greater => Err(RepairError::Longer {
            have: from,
            len: chunk.len,
        }),
        Ordering::Equal => Ok(Step::Done),
        Ordering::Less if chunk.bytes.is_empty() => Err(RepairError::Peer {
            peer,
            reason: "sent nothing short of the recording's end".into(),
        }),
        Ordering::Less => Ok(Step::Append),
    }
}

async fn read_from(
    member: &Arc<Member>,
    peer: NodeId,
    addr: &str,
    session: &str,
    from: u64,
) -> Result<FinishedChunk, RepairError> {
    let request = ClusterRequest::ReadFinished {
        session: session.to_string(),
        from,
        max: MAX_CHUNK as u32,
    };
    let failed = |reason: String| RepairError::Peer { peer, reason };
    match member.call(peer, addr, &request, READ_TIMEOUT).await {
        Ok(ClusterResponse::Finished(Ok(chunk))) => Ok(chunk),
        Ok(ClusterResponse::Finished(Err(reason))) => Err(failed(reason)),
        Ok(_) => Err(failed("answered a different RPC".into())),
        Err(e) => Err(failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: SessionState, problem: Option<&str>) -> SessionRecord {
        let mut r = SessionRecord::new_live("s".into(), "n".into(), "n/s.cast".into(), "replica");
        r.state = state;
        r.problem = problem.map(|reason| Problem {
            line: 0,
            reason: reason.into(),
        });
        r
    }

    #[test]
    fn only_a_copy_cut_by_a_stop_or_still_live_needs_the_rest() {
        assert!(is_finished(&record(SessionState::Complete, None)));
        assert!(is_finished(&record(
            SessionState::Invalid,
            Some("line 3: not JSON")
        )));
        assert!(is_finished(&record(
            SessionState::Aborted,
            Some("client went away")
        )));
        assert!(!is_finished(&record(
            SessionState::Aborted,
            Some(STOPPED_WHILE_LIVE)
        )));
        assert!(!is_finished(&record(SessionState::Live, None)));
    }

    fn answer(bytes: &[u8], len: u64, epoch: u64) -> FinishedChunk {
        FinishedChunk {
            bytes: bytes.to_vec(),
            len,
            state: SessionState::Complete,
            problem: None,
            epoch,
        }
    }

    #[test]
    fn only_a_recording_finished_at_the_sessions_last_epoch_completes_a_copy() {
        // An earlier owner's own end of the stream (epoch 1) of a session taken over at 2.
        let stale = next_step(1, 10, &answer(b"abc", 13, 1), 2);
        assert!(
            matches!(&stale, Err(RepairError::Peer { peer: 1, reason }) if reason.contains("epoch 1")),
            "{stale:?}"
        );
        // Even when it looks complete from here.
        assert!(next_step(1, 13, &answer(b"", 13, 1), 2).is_err());
        assert_eq!(
            next_step(3, 10, &answer(b"abc", 13, 2), 2).ok(),
            Some(Step::Append)
        );
        assert_eq!(
            next_step(3, 13, &answer(b"", 13, 2), 2).ok(),
            Some(Step::Done)
        );
        assert!(matches!(
            next_step(3, 14, &answer(b"", 13, 2), 2),
            Err(RepairError::Longer { have: 14, len: 13 })
        ));
        assert!(matches!(
            next_step(3, 10, &answer(b"", 13, 2), 2),
            Err(RepairError::Peer { .. })
        ));
    }

    #[test]
    fn a_copy_finished_before_the_last_takeover_is_not_final() {
        let mut r = record(SessionState::Aborted, Some("client went away"));
        r.epoch = 1;
        assert!(!is_final(&r, 2));
        assert!(is_final(&r, 1));
        r.epoch = 2;
        assert!(is_final(&r, 2));
        r.problem = Some(Problem {
            line: 0,
            reason: STOPPED_WHILE_LIVE.into(),
        });
        assert!(!is_final(&r, 2));
    }

    #[tokio::test]
    async fn a_peer_serves_only_finished_recordings_and_only_their_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage =
            Storage::open(&dir.path().join("dst"), &dir.path().join("state")).expect("storage");
        let body = b"{\"version\":2}\n[0.1,\"o\",\"hi\"]\n".to_vec();
        std::fs::create_dir_all(dir.path().join("dst/n")).expect("dir");
        // More bytes on disk than the record's final length: only the record's count is served.
        let mut on_disk = body.clone();
        on_disk.extend_from_slice(b"[0.2,\"o\",\"unacked\"]\n");
        std::fs::write(dir.path().join("dst/n/s.cast"), &on_disk).expect("write");
        let mut r = record(SessionState::Live, None);
        r.bytes = body.len() as u64;
        storage.put_record(r.clone()).await.expect("put");
        assert!(matches!(
            read_finished(&storage, "s", 0, 1024).await,
            Err(RepairError::NotFinished(_))
        ));
        r.state = SessionState::Complete;
        storage.put_record(r).await.expect("put");
        let whole = read_finished(&storage, "s", 0, 1024).await.expect("read");
        assert_eq!(whole.bytes, body);
        assert_eq!(whole.len, body.len() as u64);
        assert_eq!(whole.state, SessionState::Complete);
        let tail = read_finished(&storage, "s", 5, 4).await.expect("read");
        assert_eq!(tail.bytes, body[5..9].to_vec());
        let end = read_finished(&storage, "s", body.len() as u64, 1024)
            .await
            .expect("read");
        assert!(end.bytes.is_empty());
        assert!(matches!(
            read_finished(&storage, "nope", 0, 1).await,
            Err(RepairError::NotFinished(_))
        ));
    }

    #[tokio::test]
    async fn a_probe_for_no_bytes_still_checks_the_file_holds_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage =
            Storage::open(&dir.path().join("dst"), &dir.path().join("state")).expect("storage");
        std::fs::create_dir_all(dir.path().join("dst/n")).expect("dir");
        let body = b"{\"version\":2}\n".to_vec();
        std::fs::write(dir.path().join("dst/n/s.cast"), &body).expect("write");
        let mut r = record(SessionState::Complete, None);
        r.bytes = body.len() as u64;
        r.epoch = 3;
        storage.put_record(r.clone()).await.expect("put");
        let probe = read_finished(&storage, "s", 0, 0).await.expect("probe");
        assert!(probe.bytes.is_empty());
        assert_eq!((probe.len, probe.epoch), (body.len() as u64, 3));
        // The record says more than the file holds (a crash between the two).
        r.bytes += 1;
        storage.put_record(r).await.expect("put");
        assert!(matches!(
            read_finished(&storage, "s", 0, 0).await,
            Err(RepairError::NotFinished(_))
        ));
    }
}
