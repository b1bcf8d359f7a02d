//! Admission in a recorder set: a session starts only once Raft granted it to this node.
//!
//! Implements [`crate::session::Admission`] on top of [`Member`]. The fast path refuses
//! without I/O when this node can't possibly win a claim (disk under pressure, no leader,
//! a leader out of touch with its quorum): a Tailscale client then tries the next recorder
//! at once. Otherwise the claim is one Raft proposal, bounded by [`CLAIM_TIMEOUT`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::member::Member;
use super::state::{NAME_TAKEN, SESSION_EXISTS};
use super::types::{ClusterSessionState, Command, CommandResponse, DiskState};
use super::ClusterError;
use crate::metrics as m;
use crate::replication::owner::{OwnerStreams, Target};
use crate::replication::takeover;
use crate::replication::wire::{OpenCopy, VERSION};
use crate::replication::SessionReplication;
use crate::session::{
    Admission, Claim, ClaimRequest, Refusal, ReplicateRequest, Replicator, TakenOver,
};
use crate::storage::index::SessionState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A claim that takes longer than this is refused: the client has other recorders to try.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ClusterAdmission {
    pub member: Arc<Member>,
    /// Replication senders run here so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Stops the retries of a session's end ([`record_end`]): the node's own sweeper
    /// records that end after a restart, from the sealed recording.
    pub shutdown: CancellationToken,
}

impl Admission for ClusterAdmission {
    fn check(&self) -> Result<(), Refusal> {
        match self.member.local_disk() {
            DiskState::Ok => {}
            state => {
                return Err(Refusal::DiskPressure(
                    format!("dst file system is {state:?}").to_lowercase(),
                ))
            }
        }
        match self.member.quorum_problem() {
            Some(problem) => Err(Refusal::NoQuorum(problem)),
            None => Ok(()),
        }
    }

    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Claim, Refusal>> {
        Box::pin(async move {
            let started = Instant::now();
            let command = Command::ClaimSession {
                id: request.id,
                owner: self.member.id,
                node_dir: request.node_dir,
                file_name: request.file_name,
                started_at_ms: request.started_at_ms,
                up: Vec::new(),
            };
            let answer = tokio::time::timeout(CLAIM_TIMEOUT, self.member.propose(command)).await;
            metrics::histogram!(m::CLAIM_SECONDS).record(started.elapsed().as_secs_f64());
            match answer {
                Err(_) => Err(Refusal::NoQuorum("claim timed out".into())),
                Ok(Err(ClusterError::NoQuorum(reason))) => Err(Refusal::NoQuorum(reason)),
                Ok(Err(e)) => Err(Refusal::ClaimFailed(e.to_string())),
                Ok(Ok(CommandResponse::Claimed { epoch, replicas })) => {
                    Ok(Claim { epoch, replicas })
                }
                Ok(Ok(CommandResponse::Rejected { reason })) if reason.starts_with(NAME_TAKEN) => {
                    Err(Refusal::NameTaken(reason))
                }
                Ok(Ok(CommandResponse::Rejected { reason }))
                    if reason.starts_with(SESSION_EXISTS) =>
                {
                    Err(Refusal::Conflict(reason))
                }
                Ok(Ok(CommandResponse::Rejected { reason })) => Err(Refusal::ClaimFailed(reason)),
                Ok(Ok(other)) => Err(Refusal::ClaimFailed(format!("unexpected answer {other:?}"))),
            }
        })
    }

    fn replicate(&self, request: ReplicateRequest) -> Option<Box<dyn Replicator>> {
        let members = self.member.members();
        let targets: Vec<Target> = request
            .replicas
            .iter()
            .filter(|id| **id != self.member.id)
            .filter_map(|id| {
                members.get(id).map(|info| Target {
                    id: *id,
                    addr: info.cluster_addr.clone(),
                })
            })
            .collect();
        let set_size = request.replicas.len().max(1);
        let open = OpenCopy {
            version: VERSION,
            session: request.id,
            epoch: request.epoch,
            owner: self.member.id,
            node_dir: request.node_dir,
            file_name: request.file_name,
        };
        let streams = OwnerStreams::start(
            self.member.transport().clone(),
            open,
            request.file,
            request.written,
            targets,
            &self.tracker,
        );
        Some(Box::new(SessionReplication { streams, set_size }))
    }

    fn take_over(&self, id: &str) -> BoxFuture<'_, Result<TakenOver, Refusal>> {
        let id = id.to_string();
        Box::pin(async move { takeover::take_over(&self.member, &self.member.copies, &id).await })
    }

    fn survives_node_loss(&self) -> bool {
        true
    }

    fn name_tag(&self) -> Option<u64> {
        Some(self.member.id)
    }

    fn ended(
        &self,
        id: String,
        epoch: u64,
        state: SessionState,
        orphaned: bool,
    ) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let command = Command::EndSession {
                id: id.clone(),
                state: cluster_end_state(state, orphaned),
                epoch,
            };
            // Most ends are recorded at once. One that meets an election (the leader
            // died with the session's last bytes) is retried in the background, so that
            // neither the client's last answer waits for the election nor the recording
            // is left live in Raft for the orphan sweeper to seal as cut.
            if let Err(e) = self.member.propose(command.clone()).await {
                tracing::info!(%id, error = %e, "the session's end is not recorded yet; retrying");
                let member = self.member.clone();
                let shutdown = self.shutdown.clone();
                self.tracker.spawn(async move {
                    shutdown
                        .run_until_cancelled(record_end(member, id, command))
                        .await
                });
            }
        })
    }
}

/// How long an owner keeps trying to record a session's end in the recorder set. An
/// election takes a few election timeouts (about 2 s with the defaults); past this the
/// orphan sweeper of a replica records the end from the owner's finished copy.
const END_PATIENCE: Duration = Duration::from_secs(10);
/// First wait between two tries; doubles up to [`END_RETRY_MAX`].
const END_RETRY_FIRST: Duration = Duration::from_millis(100);
const END_RETRY_MAX: Duration = Duration::from_secs(1);

/// The state Raft records for a session that ended here as `state`.
pub fn cluster_end_state(state: SessionState, orphaned: bool) -> ClusterSessionState {
    match state {
        _ if orphaned => ClusterSessionState::Orphaned,
        SessionState::Complete | SessionState::Invalid => ClusterSessionState::Sealed,
        SessionState::Aborted | SessionState::Live => ClusterSessionState::Aborted,
    }
}

/// Retries `command` (an `EndSession`) until Raft answers, for at most [`END_PATIENCE`]
/// in all (a try in flight at the deadline is abandoned).
/// A refusal (a takeover moved the epoch on, or someone recorded another end) is an
/// answer too: the end is then someone else's to record.
async fn record_end(member: Arc<Member>, id: String, command: Command) {
    let deadline = Instant::now() + END_PATIENCE;
    let mut wait = END_RETRY_FIRST;
    loop {
        tokio::time::sleep(wait).await;
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = tokio::time::timeout(left, member.propose(command.clone()))
            .await
            .unwrap_or_else(|_| Err(ClusterError::NoQuorum("out of patience".into())));
        match answer {
            Ok(CommandResponse::Rejected { reason }) => {
                late_end("refused");
                tracing::info!(%id, %reason, "the session's end was refused; leaving it");
                return;
            }
            Ok(_) => {
                late_end("retried");
                tracing::info!(%id, "recorded the session's end after a retry");
                return;
            }
            Err(e) if Instant::now() + wait >= deadline => {
                late_end("gave_up");
                tracing::warn!(%id, error = %e, "could not record the session's end in the recorder set");
                return;
            }
            Err(_) => wait = (wait * 2).min(END_RETRY_MAX),
        }
    }
}

/// Counts one session end that missed Raft on the owner's first try.
pub fn late_end(outcome: &'static str) {
    metrics::counter!(m::SESSION_ENDS_LATE, "outcome" => outcome).increment(1);
}
