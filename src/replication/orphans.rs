//! The orphan sweeper: nothing stays live forever.
//!
//! A live session whose owner is silent (no replication frames) and which no client has
//! resumed is adopted by one of its replicas after `orphan_timeout` (staggered by the
//! replica's position in the set so that they don't race; Raft's conditional takeover
//! settles any race anyway) and sealed at the longest durable prefix of a majority, with
//! the cluster state `orphaned`. A session this node owns but no longer streams (it
//! restarted) is adopted the same way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::copies::Copies;
use crate::cluster::member::Member;
use crate::session::SessionManager;

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
    let mut suspected: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for id in due(&member, &copies, &sessions, &mut suspected, timeout) {
            // This node's view (no replication stream) is not proof: ask the owner itself.
            match owner_view(&member, &id).await {
                OwnerView::Streams => {
                    suspected.remove(&id);
                    continue;
                }
                // A busy (or frozen) owner: ask again at the next sweep, and only give up
                // on it after a long silence.
                OwnerView::NoAnswer
                    if suspected
                        .get(&id)
                        .is_some_and(|t| t.elapsed() < timeout * 3) =>
                {
                    continue
                }
                OwnerView::Gone | OwnerView::NoAnswer => {}
            }
            adopt(&sessions, &id).await;
            suspected.remove(&id);
        }
    }
}

/// Live sessions this node keeps a copy of whose owner has been silent long enough.
fn due(
    member: &Member,
    copies: &Copies,
    sessions: &SessionManager,
    suspected: &mut HashMap<String, Instant>,
    timeout: Duration,
) -> Vec<String> {
    let mine: Vec<(String, u64, usize)> = member.state.read(|s| {
        s.live_sessions()
            .filter_map(|e| {
                let rank = e.replicas.iter().position(|r| *r == member.id)?;
                Some((e.id.clone(), e.owner, rank))
            })
            .collect()
    });
    suspected.retain(|id, _| mine.iter().any(|(m, _, _)| m == id));
    let mut due = Vec::new();
    for (id, owner, rank) in mine {
        let silent = if sessions.is_live(&id) {
            None
        } else if owner == member.id {
            Some(Duration::MAX)
        } else {
            // No copy here yet (this node restarted): silent since we started looking.
            Some(
                copies
                    .get(&id)
                    .map(|c| c.since_owner_contact())
                    .unwrap_or(Duration::MAX),
            )
        };
        let Some(silent) = silent else {
            suspected.remove(&id);
            continue;
        };
        let since = *suspected.entry(id.clone()).or_insert_with(Instant::now);
        let patience = timeout + STAGGER * rank as u32;
        if silent.min(since.elapsed()) >= patience {
            due.push(id);
        }
    }
    due
}

/// How long the owner has to answer whether it still streams a session.
const OWNER_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What the session's owner says about it.
enum OwnerView {
    /// The owner answered and streams it.
    Streams,
    /// The owner is this node, not a member, refuses connections, or doesn't stream it.
    Gone,
    /// The owner didn't answer in time.
    NoAnswer,
}

async fn owner_view(member: &Member, id: &str) -> OwnerView {
    let owner = member.state.read(|s| s.session(id).map(|e| e.owner));
    let Some(owner) = owner.filter(|o| *o != member.id) else {
        return OwnerView::Gone;
    };
    let Some(addr) = member.members().get(&owner).map(|n| n.ingest_addr.clone()) else {
        return OwnerView::Gone;
    };
    let path = "/api/v1/sessions?state=live";
    match tokio::time::timeout(OWNER_CHECK_TIMEOUT, crate::admin::get(&addr, path)).await {
        Ok(Ok(serde_json::Value::Array(records))) if records.iter().any(|r| r["id"] == id) => {
            tracing::debug!(%id, owner, "owner still streams the session; not an orphan");
            OwnerView::Streams
        }
        Ok(_) => OwnerView::Gone,
        Err(_) => OwnerView::NoAnswer,
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
