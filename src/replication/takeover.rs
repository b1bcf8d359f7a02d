//! Taking a live session over: the order that keeps every acknowledged byte.
//!
//! 1. Raft: `TakeOver` from the epoch we saw → epoch + 1, this node first in the set.
//! 2. Fence every replica of the old and new set at the new epoch (each answers its
//!    durable length); from now on no write at an older epoch lands anywhere that answered.
//! 3. Need answers from a majority of the *old* set: it intersects the majority that
//!    acknowledged any byte, so the maximum length among them covers every ack.
//! 4. Bring this node's copy up to that length from the replica that has it.
//! 5. The session continues here at that length; lagging replicas catch up from this
//!    node's file through the normal replication streams.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::copies::Copies;
use super::wire::MAX_CHUNK;
use crate::cluster::member::Member;
use crate::cluster::network::{ClusterRequest, ClusterResponse};
use crate::cluster::types::{ClusterSessionState, Command, CommandResponse, NodeId, SessionEntry};
use crate::cluster::ClusterError;
use crate::session::{Refusal, TakenOver};

/// A replica that doesn't answer a fence within this is counted as unreachable.
const FENCE_TIMEOUT: Duration = Duration::from_millis(1500);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// After a majority answered, the rest may still answer for as long again as the
/// majority took, within these bounds. Their lengths only matter if they are longer, and a
/// longer copy is never required for correctness, so a dead node (usually the old owner,
/// the reason for the takeover) must cost little: healthy replicas answer together.
const FENCE_GRACE_MIN: Duration = Duration::from_millis(10);
const FENCE_GRACE_MAX: Duration = Duration::from_millis(150);

pub async fn take_over(
    member: &Arc<Member>,
    copies: &Arc<Copies>,
    id: &str,
) -> Result<TakenOver, Refusal> {
    let entry = member
        .state
        .read(|s| s.session(id).cloned())
        .ok_or_else(|| Refusal::UnknownSession(id.to_string()))?;
    if entry.state != ClusterSessionState::Live {
        return Err(Refusal::Conflict(format!(
            "session {id} is {}",
            entry.state.as_str()
        )));
    }
    let started = std::time::Instant::now();
    let (epoch, replicas) = new_epoch(member, &entry).await?;
    let proposed = started.elapsed();
    let lengths = fence_all(member, copies, &entry, epoch, &replicas).await;
    tracing::debug!(session = %id, epoch, proposed_ms = proposed.as_millis() as u64,
        fenced_ms = started.elapsed().as_millis() as u64, answered = ?lengths, "fenced");
    let old: BTreeSet<NodeId> = entry.replicas.iter().copied().collect();
    let answered_old = lengths.iter().filter(|(n, _)| old.contains(n)).count();
    let majority = old.len() / 2 + 1;
    if answered_old < majority {
        return Err(Refusal::NoQuorum(format!(
            "only {answered_old} of the session's {} replicas answered (need {majority})",
            old.len()
        )));
    }
    let (holder, resume_at) = lengths
        .iter()
        .max_by_key(|(_, len)| *len)
        .copied()
        .unwrap_or((member.id, 0));
    let have = lengths
        .iter()
        .find(|(n, _)| *n == member.id)
        .map(|(_, l)| *l)
        .unwrap_or(0);
    if have < resume_at {
        catch_up(member, copies, &entry, epoch, holder, have, resume_at).await?;
    }
    // This node's session writes the file from here on; its replica view is stale now.
    copies.forget(id);
    Ok(TakenOver {
        epoch,
        replicas,
        node_dir: entry.node_dir,
        file_name: entry.file_name,
        started_at_ms: entry.started_at_ms,
        resume_at,
    })
}

async fn new_epoch(
    member: &Arc<Member>,
    entry: &SessionEntry,
) -> Result<(u64, Vec<NodeId>), Refusal> {
    let command = Command::TakeOver {
        id: entry.id.clone(),
        new_owner: member.id,
        from_epoch: entry.epoch,
        up: Vec::new(),
    };
    match member.propose(command).await {
        Ok(CommandResponse::Claimed { epoch, replicas }) => Ok((epoch, replicas)),
        Ok(CommandResponse::Rejected { reason }) => Err(Refusal::Conflict(reason)),
        Ok(other) => Err(Refusal::ClaimFailed(format!("unexpected answer {other:?}"))),
        Err(ClusterError::NoQuorum(reason)) => Err(Refusal::NoQuorum(reason)),
        Err(e) => Err(Refusal::ClaimFailed(e.to_string())),
    }
}

/// Fences every replica of the old and new sets; returns the lengths of those that
/// answered. Once a majority of the old set has answered, the others get only a short
/// grace: a dead replica must not hold the takeover for the whole fence timeout.
async fn fence_all(
    member: &Arc<Member>,
    copies: &Arc<Copies>,
    entry: &SessionEntry,
    epoch: u64,
    replicas: &[NodeId],
) -> Vec<(NodeId, u64)> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let old: BTreeSet<NodeId> = entry.replicas.iter().copied().collect();
    let majority = old.len() / 2 + 1;
    let targets: BTreeSet<NodeId> = entry.replicas.iter().chain(replicas).copied().collect();
    let mut pending: FuturesUnordered<_> = targets
        .into_iter()
        .map(|node| async move {
            let fenced =
                tokio::time::timeout(FENCE_TIMEOUT, fence_one(member, copies, entry, epoch, node))
                    .await;
            match fenced {
                Ok(Ok(len)) => Some((node, len)),
                Ok(Err(e)) => {
                    tracing::warn!(session = %entry.id, node, error = %e, "fencing failed");
                    None
                }
                Err(_) => {
                    tracing::warn!(session = %entry.id, node, "fencing timed out");
                    None
                }
            }
        })
        .collect();
    let mut answered = Vec::new();
    let started = tokio::time::Instant::now();
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let next = match grace.as_mut() {
            Some(sleep) => tokio::select! {
                next = pending.next() => next,
                _ = sleep => break,
            },
            None => pending.next().await,
        };
        let Some(result) = next else { break };
        answered.extend(result);
        let old_answered = answered.iter().filter(|(n, _)| old.contains(n)).count();
        if grace.is_none() && old_answered >= majority {
            let wait = started.elapsed().clamp(FENCE_GRACE_MIN, FENCE_GRACE_MAX);
            grace = Some(Box::pin(tokio::time::sleep(wait)));
        }
    }
    answered
}

async fn fence_one(
    member: &Arc<Member>,
    copies: &Arc<Copies>,
    entry: &SessionEntry,
    epoch: u64,
    node: NodeId,
) -> Result<u64, String> {
    if node == member.id {
        return copies
            .fence(&entry.id, epoch, &entry.node_dir, &entry.file_name)
            .await
            .map_err(|e| e.to_string());
    }
    let addr = member
        .members()
        .get(&node)
        .map(|n| n.cluster_addr.clone())
        .ok_or("not a member")?;
    let request = ClusterRequest::Fence {
        session: entry.id.clone(),
        epoch,
        node_dir: entry.node_dir.clone(),
        file_name: entry.file_name.clone(),
    };
    match member.call(node, &addr, &request, FENCE_TIMEOUT).await {
        Ok(ClusterResponse::Fenced(answer)) => answer,
        Ok(_) => Err("peer answered a different RPC".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Copies `[from, to)` from `holder` into this node's copy.
async fn catch_up(
    member: &Arc<Member>,
    copies: &Arc<Copies>,
    entry: &SessionEntry,
    epoch: u64,
    holder: NodeId,
    from: u64,
    to: u64,
) -> Result<(), Refusal> {
    let addr = member
        .members()
        .get(&holder)
        .map(|n| n.cluster_addr.clone())
        .ok_or_else(|| Refusal::NoQuorum(format!("node {holder} left the set")))?;
    let copy = copies
        .get(&entry.id)
        .ok_or_else(|| Refusal::ClaimFailed("local copy vanished".into()))?;
    let mut offset = from;
    while offset < to {
        let max = ((to - offset) as usize).min(MAX_CHUNK) as u32;
        let request = ClusterRequest::Fetch {
            session: entry.id.clone(),
            from: offset,
            max,
        };
        let bytes = match member.call(holder, &addr, &request, FETCH_TIMEOUT).await {
            Ok(ClusterResponse::Fetched(Ok(bytes))) if !bytes.is_empty() => bytes,
            Ok(ClusterResponse::Fetched(Ok(_))) => {
                return Err(Refusal::ClaimFailed(format!(
                    "node {holder} has no bytes at {offset}"
                )))
            }
            Ok(ClusterResponse::Fetched(Err(e))) => return Err(Refusal::ClaimFailed(e)),
            Ok(_) => return Err(Refusal::ClaimFailed("peer answered a different RPC".into())),
            Err(e) => {
                return Err(Refusal::NoQuorum(format!(
                    "fetching from node {holder}: {e}"
                )))
            }
        };
        offset = copy
            .append(epoch, offset, bytes.into())
            .await
            .map_err(|e| Refusal::ClaimFailed(e.to_string()))?;
    }
    copies
        .fence(&entry.id, epoch, &entry.node_dir, &entry.file_name)
        .await
        .map_err(|e| Refusal::ClaimFailed(e.to_string()))?;
    Ok(())
}
