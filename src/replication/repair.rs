//! Late copies: a replica that was away when its session ended gets the rest of the
//! recording from a peer that holds it finished, so that every replica ends with the
//! whole sealed recording.
//!
//! The owner streams to a missing replica while the session lives and for
//! [`super::SEAL_STRAGGLERS`] after it ends; a replica that comes back later finds, after
//! startup recovery, a copy marked `aborted` ([`STOPPED_WHILE_LIVE`]) or no copy at all,
//! while Raft says the session ended. After a restart this module looks for such copies a
//! few times (Raft has to catch up first) and, for each, reads the missing bytes from the
//! other replicas (owner first) with [`ClusterRequest::ReadFinished`], appends them, makes
//! them durable and marks the copy with the final state the peer holds.
//!
//! It owns that pull and the peer's answer ([`read_finished`]). It does not own live
//! copies ([`super::copies`]) nor takeovers: only sessions Raft has ended are repaired,
//! and none that has an open copy here.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::copies::Copies;
use super::wire::MAX_CHUNK;
use crate::asciicast::Problem;
use crate::cluster::member::Member;
use crate::cluster::network::{ClusterRequest, ClusterResponse};
use crate::cluster::types::{ClusterSessionState, NodeId, SessionEntry};
use crate::storage::index::{SessionRecord, SessionState};
use crate::storage::{RecordingFile, Storage, StorageError, STOPPED_WHILE_LIVE};

/// When, after start, to look for copies to repair: Raft must have applied the sessions
/// that ended while this node was away, which takes a heartbeat or a snapshot.
const PASSES_AFTER_START: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(60),
];
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
    if bytes.len() < want {
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
    })
}

/// Looks for late copies a few times after start and repairs them.
pub async fn after_start(member: Arc<Member>, copies: Arc<Copies>, shutdown: CancellationToken) {
    let started = tokio::time::Instant::now();
    for at in PASSES_AFTER_START {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(started + at) => {}
        }
        let repaired = pass(&member, &copies).await;
        if repaired > 0 {
            tracing::info!(repaired, "repaired late copies of ended sessions");
        }
    }
}

/// One look at every ended session this node should hold a copy of; returns how many
/// copies it completed.
async fn pass(member: &Arc<Member>, copies: &Arc<Copies>) -> usize {
    let me = member.id;
    let ended: Vec<SessionEntry> = member.state.read(|s| {
        s.sessions()
            .values()
            .filter(|e| e.state != ClusterSessionState::Live)
            .filter(|e| e.owner != me && e.replicas.contains(&me))
            .cloned()
            .collect()
    });
    let mut repaired = 0;
    for entry in ended {
        if copies.get(&entry.id).is_some() {
            continue;
        }
        let record = match copies.storage().get_record(&entry.id).await {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(session = %entry.id, error = %e, "reading the index failed");
                continue;
            }
        };
        if record.as_ref().is_some_and(is_finished) {
            continue;
        }
        match repair(member, copies.storage(), &entry, record).await {
            Ok(len) => {
                metrics::counter!(crate::metrics::COPIES_REPAIRED).increment(1);
                tracing::info!(session = %entry.id, len, "completed a late copy from a peer");
                repaired += 1;
            }
            Err(e) => {
                tracing::warn!(session = %entry.id, error = %e, "could not complete a late copy")
            }
        }
    }
    repaired
}

/// Completes this node's copy of `entry` from the first peer that has it finished.
async fn repair(
    member: &Arc<Member>,
    storage: &Storage,
    entry: &SessionEntry,
    record: Option<SessionRecord>,
) -> Result<u64, RepairError> {
    let mut file = storage.open_copy(&entry.node_dir, &entry.file_name).await?;
    let peers = entry.replicas.iter().copied().filter(|n| *n != member.id);
    for peer in peers {
        let Some(addr) = member.members().get(&peer).map(|n| n.cluster_addr.clone()) else {
            continue;
        };
        let end = match fetch_rest(member, peer, &addr, &entry.id, &mut file).await {
            Ok(end) => end,
            // This node's own trouble, or a copy that no peer can fix: stop here.
            Err(e @ (RepairError::Longer { .. } | RepairError::Storage(_))) => return Err(e),
            Err(e) => {
                tracing::debug!(session = %entry.id, peer, error = %e, "peer could not help");
                continue;
            }
        };
        storage.sync(&file.sync_handle()).await?;
        let mut record = record.unwrap_or_else(|| {
            SessionRecord::new_live(
                entry.id.clone(),
                entry.node_dir.clone(),
                file.rel_path().to_string(),
                "replica",
            )
        });
        record.state = end.state;
        record.problem = end.problem;
        record.bytes = end.len;
        record.epoch = record.epoch.max(entry.epoch);
        record.replicas = entry.replicas.clone();
        record.ended_at = Some(chrono::Utc::now());
        storage.put_record(record).await?;
        return Ok(end.len);
    }
    Err(RepairError::NoPeer)
}

/// Appends what `peer` holds past the copy's end; returns the peer's last answer once the
/// copy is as long as the peer's finished recording.
async fn fetch_rest(
    member: &Arc<Member>,
    peer: NodeId,
    addr: &str,
    session: &str,
    file: &mut RecordingFile,
) -> Result<FinishedChunk, RepairError> {
    loop {
        let chunk = read_from(member, peer, addr, session, file.written()).await?;
        match file.written().cmp(&chunk.len) {
            Ordering::Greater => {
                return Err(RepairError::Longer {
                    have: file.written(),
                    len: chunk.len,
                })
            }
            Ordering::Equal => return Ok(chunk),
            Ordering::Less if chunk.bytes.is_empty() => {
                return Err(RepairError::Peer {
                    peer,
                    reason: "sent nothing short of the recording's end".into(),
                })
            }
            Ordering::Less => file.append(Bytes::from(chunk.bytes)).await?,
        }
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
}
