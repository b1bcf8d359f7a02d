//! This node as a member of the recorder set: its Raft instance and what it does with it.
//!
//! Owns start-up of the control plane (TLS, QUIC transport, durable store, `Raft::new`,
//! bootstrap of the initial membership), proposing commands (forwarded to the leader when
//! this node is not it), serialized membership changes, the status view, and the loops
//! beside Raft: the disk monitor and the metrics exporter. It does not own what commands
//! mean ([`super::state`]) nor how admission uses them ([`super::admission`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::network::{ClusterRequest, ClusterResponse, Network, PeerContacts};
use super::store::{self, StateReader};
use super::tls::{TlsConfig, TlsFiles};
use super::transport::{RpcHandler, Transport, TransportError};
use super::types::{
    Command, CommandResponse, DiskReport, DiskState, NodeId, NodeInfo, SessionEntry, TypeConfig,
};
use super::{disk, ClusterError};
use crate::config::ClusterConfig;
use crate::metrics as m;
use crate::replication::copies::Copies;
use crate::replication::replica::ReplicaStreams;
use crate::storage::Storage;

/// Longest a proposal may take before the caller hears "no quorum".
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// A forwarded proposal hops at most this many times (leader changes mid-flight).
const MAX_FORWARDS: usize = 3;
/// Keep this many applied entries before a snapshot replaces them (cheap catch-up for
/// short outages, snapshots for long ones).
const DEFAULT_SNAPSHOT_LOGS: u64 = 5_000;

/// A running member of the recorder set.
pub struct Member {
    pub id: NodeId,
    pub raft: Raft<TypeConfig>,
    /// The applied cluster state (sessions, disk reports, settings).
    pub state: StateReader,
    transport: Arc<Transport>,
    /// This node's copies of recordings owned elsewhere (the replica side of replication).
    pub copies: Arc<Copies>,
    /// Last successful RPC to each peer: the leader's view of who is up.
    pub contacts: Arc<PeerContacts>,
    /// Last AppendEntries from a leader (a follower's view of whether it has one).
    pub leader_contact: Arc<PeerContacts>,
    pub config: ClusterConfig,
    /// This node's own disk state, as the disk monitor last classified it (`DiskState as u8`).
    local_disk: tokio::sync::watch::Sender<DiskState>,
    /// Membership changes one at a time (openraft has panicked under rapid churn).
    membership_lock: tokio::sync::Mutex<()>,
    /// Proposals waiting for the batcher (bound: [`PROPOSAL_QUEUE`]; senders wait).
    proposals: tokio::sync::mpsc::Sender<Proposal>,
}

/// One command waiting to be proposed, and where its answer goes.
struct Proposal {
    command: Command,
    reply: tokio::sync::oneshot::Sender<Result<CommandResponse, ClusterError>>,
}

/// Proposals queued on this node; more wait (back-pressure) rather than grow memory.
const PROPOSAL_QUEUE: usize = 4096;
/// Most commands in one Raft log entry.
const MAX_BATCH: usize = 256;
/// Batches in flight at once: one stuck on a dead leader must not hold up the rest.
const BATCHES_IN_FLIGHT: usize = 4;
/// A forwarded proposal the leader doesn't answer in this long is retried at the leader
/// Raft then names (a healthy leader answers in milliseconds).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a forwarded proposal came back without an answer.
enum ForwardError {
    /// Raft elected another leader meanwhile: retry there at once.
    LeaderChanged,
    Failed(ClusterError),
}

/// What `cluster status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub state: String,
    /// Index of the last entry in this node's log (appended, not necessarily committed:
    /// openraft 0.9 does not export the commit index).
    pub last_log: Option<u64>,
    /// Index of the last entry this node applied (committed by definition).
    pub applied: Option<u64>,
    /// Last log index covered by this node's latest snapshot.
    pub snapshot: Option<u64>,
    /// Last log index removed from this node's log (compaction).
    pub purged: Option<u64>,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub role: &'static str,
    pub cluster_addr: String,
    pub ingest_addr: String,
    pub disk: Option<DiskReport>,
    pub live_sessions: usize,
    /// Milliseconds since this node last heard from it (None: never, or it is this node).
    pub last_contact_ms: Option<u64>,
    /// Answered by the leader only: whether a session claimed now would count this member
    /// as up (see [`Member::up_nodes`]). Lets operators and tests tell that a restarted
    /// node is back in new replica sets, which its own /healthz cannot know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up: Option<bool>,
}

impl Member {
    /// Starts the control plane and serves the cluster port until `shutdown`.
    pub async fn start(
        config: ClusterConfig,
        statedir: &Path,
        storage: Storage,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Arc<Member>, ClusterError> {
        let dst = storage.dst().to_path_buf();
        let tls = TlsConfig::load(&TlsFiles {
            ca_cert: config.ca.clone(),
            node_cert: config.cert.clone(),
            node_key: config.key.clone(),
        })?;
        let transport = Arc::new(Transport::bind(config.listen, tls, config.node_id)?);
        let (log_store, sm_store) = store::open(statedir).await?;
        let state = sm_store.reader();
        let (proposals, proposals_rx) = tokio::sync::mpsc::channel(PROPOSAL_QUEUE);
        let copies = Copies::new(
            storage.clone(),
            state.clone(),
            shutdown.clone(),
            tracker.clone(),
        );
        let contacts = Arc::new(PeerContacts::default());
        let network = Network {
            transport: transport.clone(),
            contacts: contacts.clone(),
        };
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config(&config)?),
            network,
            log_store,
            sm_store,
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let member = Arc::new(Member {
            id: config.node_id,
            raft,
            state,
            transport: transport.clone(),
            copies: copies.clone(),
            contacts,
            leader_contact: Arc::new(PeerContacts::default()),
            config,
            local_disk: tokio::sync::watch::Sender::new(DiskState::Ok),
            membership_lock: tokio::sync::Mutex::new(()),
            proposals,
        });
        tracker.spawn(batcher(
            member.clone(),
            proposals_rx,
            shutdown.clone(),
            tracker.clone(),
        ));
        let handler = RpcServer(member.clone());
        let streams = ReplicaStreams { copies, storage };
        let serve_cancel = shutdown.clone();
        tracker.spawn(async move {
            transport.serve(handler, Some(streams), serve_cancel).await;
        });
        member.bootstrap().await?;
        tracker.spawn(disk::monitor(member.clone(), dst, shutdown.clone()));
        tracker.spawn(export_metrics(member.clone(), shutdown.clone()));
        if let Some(after) = member.config.forget_ended_after {
            tracker.spawn(forget_ended(member.clone(), after, shutdown.clone()));
        }
        let raft = member.raft.clone();
        tracker.spawn(async move {
            shutdown.cancelled().await;
            if let Err(e) = raft.shutdown().await {
                tracing::warn!(error = %e, "raft shutdown");
            }
        });
        tracing::info!(node = member.id, listen = %member.config.listen, "cluster member started");
        Ok(member)
    }

    /// First start of an initial member: propose the initial membership. Every initial
    /// member does this with the same config, which openraft documents as safe.
    async fn bootstrap(&self) -> Result<(), ClusterError> {
        if self.config.initial_members.is_empty() {
            return Ok(());
        }
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let members: BTreeMap<NodeId, NodeInfo> = self
            .config
            .initial_members
            .iter()
            .map(|m| {
                let info = NodeInfo {
                    cluster_addr: m.cluster_addr.clone(),
                    ingest_addr: m.ingest_addr.clone(),
                };
                (m.id, info)
            })
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => tracing::info!("initialized the recorder set"),
            Err(RaftError::APIError(e)) => {
                tracing::info!(reason = %e, "recorder set already initialized")
            }
            Err(e) => return Err(ClusterError::Raft(e.to_string())),
        }
        Ok(())
    }

    /// Proposes `command` through Raft: here if this node leads, else at the leader.
    /// Commands proposed concurrently share one log entry (see [`batcher`]): openraft
    /// 0.9 appends and fsyncs each entry on its own.
    pub async fn propose(&self, command: Command) -> Result<CommandResponse, ClusterError> {
        let ask = async {
            let (reply, answer) = tokio::sync::oneshot::channel();
            self.proposals
                .send(Proposal { command, reply })
                .await
                .map_err(|_| ClusterError::Raft("proposal batcher stopped".into()))?;
            answer
                .await
                .map_err(|_| ClusterError::Raft("proposal batcher dropped the proposal".into()))?
        };
        tokio::time::timeout(PROPOSE_TIMEOUT, ask)
            .await
            .map_err(|_| ClusterError::NoQuorum("proposal timed out".into()))?
    }

    async fn propose_unbounded(&self, command: Command) -> Result<CommandResponse, ClusterError> {
        let mut command = command;
        for _ in 0..MAX_FORWARDS {
            let filled = self.fill_up(command.clone());
            let started = std::time::Instant::now();
            match self.raft.client_write(filled).await {
                Ok(written) => {
                    metrics::histogram!(m::RAFT_WRITE_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    return Ok(written.data);
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    let (Some(leader), Some(node)) = (forward.leader_id, forward.leader_node)
                    else {
                        return Err(ClusterError::NoQuorum("no leader known".into()));
                    };
                    match self
                        .forward_while_leader(leader, &node, command.clone())
                        .await
                    {
                        Ok(response) => return Ok(response),
                        Err(ForwardError::LeaderChanged) => {
                            tracing::debug!(
                                leader,
                                "leader changed under a forwarded proposal; retrying at once"
                            );
                        }
                        Err(ForwardError::Failed(e)) => {
                            tracing::debug!(leader, error = %e, "forwarding a proposal failed; retrying");
                            tokio::time::sleep(self.config.heartbeat).await;
                        }
                    }
                }
                Err(e) => return Err(ClusterError::Raft(e.to_string())),
            }
            command = command.clone();
        }
        Err(ClusterError::NoQuorum("leader kept changing".into()))
    }

    /// Forwards to `leader`, giving up as soon as Raft names another leader: a dead
    /// leader never answers, and its successor should get the proposal the moment it is
    /// elected rather than after [`FORWARD_TIMEOUT`].
    async fn forward_while_leader(
        &self,
        leader: NodeId,
        node: &NodeInfo,
        command: Command,
    ) -> Result<CommandResponse, ForwardError> {
        let mut metrics = self.raft.metrics();
        let replaced = async move {
            let stopped = metrics
                .wait_for(|m| m.current_leader.is_some_and(|l| l != leader))
                .await
                .is_err();
            if stopped {
                // Raft stopped: let the forward itself finish or time out.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            answer = self.forward(leader, node, command) => answer.map_err(ForwardError::Failed),
            () = replaced => Err(ForwardError::LeaderChanged),
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        node: &NodeInfo,
        command: Command,
    ) -> Result<CommandResponse, ClusterError> {
        let request = ClusterRequest::Propose(command);
        match self
            .transport
            .call(leader, &node.cluster_addr, &request, FORWARD_TIMEOUT)
            .await?
        {
            ClusterResponse::Propose(Ok(response)) => Ok(response),
            ClusterResponse::Propose(Err(reason)) => Err(ClusterError::NoQuorum(reason)),
            _ => Err(ClusterError::Raft("leader answered a different RPC".into())),
        }
    }

    /// One RPC to a peer over the cluster transport.
    pub async fn call(
        &self,
        node: NodeId,
        addr: &str,
        request: &ClusterRequest,
        timeout: Duration,
    ) -> Result<ClusterResponse, TransportError> {
        self.transport.call(node, addr, request, timeout).await
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// The leader fills a claim's `up` with the members it heard from recently.
    fn fill_up(&self, command: Command) -> Command {
        let up = || self.up_nodes();
        match command {
            Command::ClaimSession {
                id,
                owner,
                node_dir,
                file_name,
                started_at_ms,
                ..
            } => Command::ClaimSession {
                id,
                owner,
                node_dir,
                file_name,
                started_at_ms,
                up: up(),
            },
            Command::TakeOver {
                id,
                new_owner,
                from_epoch,
                ..
            } => Command::TakeOver {
                id,
                new_owner,
                from_epoch,
                up: up(),
            },
            Command::Batch(commands) => {
                Command::Batch(commands.into_iter().map(|c| self.fill_up(c)).collect())
            }
            other => other,
        }
    }

    /// This node plus every member that answered within the minimum election timeout.
    pub fn up_nodes(&self) -> Vec<NodeId> {
        let fresh = self.config.election_min;
        let members = self.members();
        members
            .keys()
            .copied()
            .filter(|id| *id == self.id || self.contacts.since(*id).is_some_and(|d| d <= fresh))
            .collect()
    }

    /// Voters and learners with their addresses, from the effective membership.
    pub fn members(&self) -> BTreeMap<NodeId, NodeInfo> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, info)| (*id, info.clone()))
            .collect()
    }

    fn voters(&self) -> BTreeSet<NodeId> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.membership_config.membership().voter_ids().collect()
    }

    /// The leader's ingest address, for redirecting operators.
    pub fn leader_ingest_addr(&self) -> Option<String> {
        let leader = self.raft.metrics().borrow().current_leader?;
        self.members().get(&leader).map(|n| n.ingest_addr.clone())
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Why this node can't take a session right now, checked without any I/O.
    pub fn quorum_problem(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let silence = match metrics.current_leader {
            None => return Some("no leader elected".into()),
            Some(leader) if leader == self.id => {
                LeaderSilence::Quorum(metrics.millis_since_quorum_ack.map(Duration::from_millis))
            }
            Some(leader) => LeaderSilence::Leader(leader, self.leader_contact.since(leader)),
        };
        silence.problem(self.config.election_max)
    }

    pub fn local_disk(&self) -> DiskState {
        *self.local_disk.borrow()
    }

    /// This node's disk state as it changes (the node hands its sessions off when full).
    pub fn local_disk_watch(&self) -> tokio::sync::watch::Receiver<DiskState> {
        self.local_disk.subscribe()
    }

    pub(super) fn set_local_disk(&self, state: DiskState) {
        self.local_disk
            .send_if_modified(|s| std::mem::replace(s, state) != state);
    }

    /// Adds a learner and waits until it has caught up.
    pub async fn add_learner(&self, id: NodeId, info: NodeInfo) -> Result<(), ClusterError> {
        let _serialized = self.membership_lock.lock().await;
        self.raft
            .add_learner(id, info, true)
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::Raft(e.to_string()))
    }

    /// Makes a member a voter.
    pub async fn promote(&self, id: NodeId) -> Result<(), ClusterError> {
        let _serialized = self.membership_lock.lock().await;
        if !self.members().contains_key(&id) {
            return Err(ClusterError::Membership(format!(
                "node {id} is not a learner; add it first"
            )));
        }
        let voters = BTreeSet::from([id]);
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(voters), false)
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::Raft(e.to_string()))
    }

    /// Removes a member (voter or learner) from the set.
    pub async fn remove(&self, id: NodeId) -> Result<(), ClusterError> {
        let _serialized = self.membership_lock.lock().await;
        let ids = BTreeSet::from([id]);
        if self.voters().contains(&id) {
            if self.voters().len() <= 1 {
                return Err(ClusterError::Membership(
                    "cannot remove the last voter".into(),
                ));
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
        }
        if self.members().contains_key(&id) {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(ids), false)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
        }
        self.transport.forget(id);
        Ok(())
    }

    /// Leader, term, members with their disk state and load.
    pub fn status(&self) -> Status {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let (reports, live) = self.state.read(|s| {
            let mut live: BTreeMap<NodeId, usize> = BTreeMap::new();
            for session in s.live_sessions() {
                *live.entry(session.owner).or_default() += 1;
            }
            (s.nodes.clone(), live)
        });
        let up = (metrics.current_leader == Some(self.id)).then(|| self.up_nodes());
        let members = membership
            .nodes()
            .map(|(id, info)| MemberStatus {
                id: *id,
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                },
                cluster_addr: info.cluster_addr.clone(),
                ingest_addr: info.ingest_addr.clone(),
                disk: reports.get(id).cloned(),
                live_sessions: live.get(id).copied().unwrap_or(0),
                last_contact_ms: self.last_contact(*id, metrics.current_leader),
                up: up.as_ref().map(|up| up.contains(id)),
            })
            .collect();
        Status {
            node_id: self.id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            state: format!("{:?}", metrics.state),
            last_log: metrics.last_log_index,
            applied: metrics.last_applied.map(|l| l.index),
            snapshot: metrics.snapshot.map(|l| l.index),
            purged: metrics.purged.map(|l| l.index),
            members,
        }
    }

    fn last_contact(&self, id: NodeId, leader: Option<NodeId>) -> Option<u64> {
        if id == self.id {
            return None;
        }
        let from_leader = (leader == Some(id))
            .then(|| self.leader_contact.since(id))
            .flatten();
        from_leader
            .or_else(|| self.contacts.since(id))
            .map(|d| d.as_millis() as u64)
    }

    /// The cluster session table, newest first.
    pub fn sessions(&self, live_only: bool) -> Vec<SessionEntry> {
        let mut sessions: Vec<SessionEntry> = self.state.read(|s| {
            if live_only {
                s.live_sessions().cloned().collect()
            } else {
                s.sessions().values().cloned().collect()
            }
        });
        sessions.sort_by(|a, b| b.started_at_ms.cmp(&a.started_at_ms).then(a.id.cmp(&b.id)));
        sessions
    }
}

/// Proposes queued commands, all that are waiting at once as one log entry, one entry
/// at a time: group commit for Raft. Batches forwarded by followers are flattened in.
async fn batcher(
    member: Arc<Member>,
    mut queue: tokio::sync::mpsc::Receiver<Proposal>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = queue.recv() => match next {
                Some(proposal) => proposal,
                None => return,
            },
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(proposal) => batch.push(proposal),
                Err(_) => break,
            }
        }
        let member = member.clone();
        tracker.spawn(async move {
            propose_batch(&member, batch).await;
            drop(permit);
        });
    }
}

async fn propose_batch(member: &Member, batch: Vec<Proposal>) {
    let mut sizes = Vec::with_capacity(batch.len());
    let mut commands = Vec::new();
    for proposal in &batch {
        match &proposal.command {
            Command::Batch(inner) => {
                sizes.push(Some(inner.len()));
                commands.extend(inner.iter().cloned());
            }
            single => {
                sizes.push(None);
                commands.push(single.clone());
            }
        }
    }
    let command = match (commands.len(), sizes.as_slice()) {
        (1, [None]) => commands.remove(0),
        _ => Command::Batch(commands),
    };
    let result = tokio::time::timeout(PROPOSE_TIMEOUT, member.propose_unbounded(command))
        .await
        .unwrap_or_else(|_| Err(ClusterError::NoQuorum("proposal timed out".into())));
    answer_batch(batch, sizes, result);
}

/// Hands each waiting proposal its own answer out of the batch's.
fn answer_batch(
    batch: Vec<Proposal>,
    sizes: Vec<Option<usize>>,
    result: Result<CommandResponse, ClusterError>,
) {
    let mut answers = match result {
        Ok(CommandResponse::Batch(answers)) if !matches!(sizes.as_slice(), [None]) => {
            answers.into_iter()
        }
        Ok(single) => vec![single].into_iter(),
        Err(e) => {
            let shared = |e: &ClusterError| match e {
                ClusterError::NoQuorum(reason) => ClusterError::NoQuorum(reason.clone()),
                other => ClusterError::Raft(other.to_string()),
            };
            for proposal in batch {
                let _ = proposal.reply.send(Err(shared(&e)));
            }
            return;
        }
    };
    for (proposal, size) in batch.into_iter().zip(sizes) {
        let answer = match size {
            None => answers.next(),
            Some(k) => Some(CommandResponse::Batch(answers.by_ref().take(k).collect())),
        };
        let answer = answer.ok_or_else(|| ClusterError::Raft("batch answer is short".into()));
        // The proposer may have timed out and gone; nothing to do then.
        let _ = proposal.reply.send(answer);
    }
}

fn raft_config(config: &ClusterConfig) -> Result<openraft::Config, ClusterError> {
    let ms = |d: Duration| d.as_millis() as u64;
    let raft = openraft::Config {
        cluster_name: "quorumcast".into(),
        heartbeat_interval: ms(config.heartbeat),
        election_timeout_min: ms(config.election_min),
        election_timeout_max: ms(config.election_max),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
            config.snapshot_logs.unwrap_or(DEFAULT_SNAPSHOT_LOGS),
        ),
        max_in_snapshot_log_to_keep: config.snapshot_logs.map(|n| n / 2).unwrap_or(1_000),
        ..Default::default()
    };
    raft.validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))
}

/// Answers peers' RPCs on the cluster port.
struct RpcServer(Arc<Member>);

impl RpcHandler<ClusterRequest, ClusterResponse> for RpcServer {
    async fn handle(&self, from: NodeId, request: ClusterRequest) -> ClusterResponse {
        let member = &self.0;
        match request {
            ClusterRequest::AppendEntries(rpc) => {
                // Only the current leader sends these; they are how a follower knows it has
                // one. The contact counts once this node has answered, not when the request
                // arrived: /healthz turns 200 on it, and a slow first append after a restart
                // should not make this node look ready sooner. It can still be ahead of the
                // leader's view for a moment (BENCHMARKS.md, "the restart race"): the
                // leader's status says which members new replica sets would use.
                let answer = member.raft.append_entries(rpc).await;
                if answer.is_ok() {
                    member.leader_contact.record(from);
                }
                ClusterResponse::AppendEntries(answer)
            }
            ClusterRequest::Vote(rpc) => ClusterResponse::Vote(member.raft.vote(rpc).await),
            ClusterRequest::InstallSnapshot(rpc) => {
                let answer = member.raft.install_snapshot(rpc).await;
                if answer.is_ok() {
                    member.leader_contact.record(from);
                }
                ClusterResponse::InstallSnapshot(answer)
            }
            ClusterRequest::Fence {
                session,
                epoch,
                node_dir,
                file_name,
            } => {
                let fenced = member
                    .copies
                    .fence(&session, epoch, &node_dir, &file_name)
                    .await;
                ClusterResponse::Fenced(fenced.map_err(|e| e.to_string()))
            }
            ClusterRequest::Fetch { session, from, max } => {
                let max = (max as usize).min(crate::replication::wire::MAX_CHUNK);
                let read = member.copies.read(&session, from, max).await;
                ClusterResponse::Fetched(read.map(|b| b.to_vec()).map_err(|e| e.to_string()))
            }
            ClusterRequest::ReadFinished { session, from, max } => {
                let max = max.min(crate::replication::wire::MAX_CHUNK as u32);
                let read = crate::replication::repair::read_finished(
                    member.copies.storage(),
                    &session,
                    from,
                    max,
                )
                .await;
                ClusterResponse::Finished(read.map_err(|e| e.to_string()))
            }
            ClusterRequest::Propose(command) => {
                if !member.is_leader() {
                    return ClusterResponse::Propose(Err(format!(
                        "node {} is not the leader",
                        member.id
                    )));
                }
                let answer = member.propose(command).await.map_err(|e| e.to_string());
                ClusterResponse::Propose(answer)
            }
        }
    }
}

/// How often the leader looks for ended sessions to forget. Each pass that finds some
/// costs one log entry; a pass that finds none costs a scan of the table, no entry.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// On the leader: proposes [`Command::ForgetEnded`] for the sessions that ended and
/// started more than `after` ago, so that the table keeps a bounded history.
async fn forget_ended(member: Arc<Member>, after: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(FORGET_EVERY.min(after));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if member.raft.metrics().borrow().state != ServerState::Leader {
            continue;
        }
        let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        let cutoff = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(after_ms);
        if !member.state.read(|s| s.has_ended_before(cutoff)) {
            continue;
        }
        match member
            .propose(Command::ForgetEnded {
                started_before_ms: cutoff,
            })
            .await
        {
            Ok(CommandResponse::Forgotten { sessions }) => {
                tracing::info!(sessions, "forgot ended sessions older than the retention");
            }
            Ok(other) => tracing::warn!(?other, "unexpected answer to ForgetEnded"),
            // Lost leadership or quorum meanwhile: the next leader's pass does it.
            Err(e) => tracing::debug!(error = %e, "could not forget ended sessions"),
        }
    }
}

/// Publishes Raft and cluster state as Prometheus gauges, a few times a second.
async fn export_metrics(member: Arc<Member>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let metrics = member.raft.metrics().borrow().clone();
        metrics::gauge!(m::RAFT_TERM).set(metrics.current_term as f64);
        metrics::gauge!(m::RAFT_LEADER)
            .set(metrics.current_leader.map(|l| l as f64).unwrap_or(-1.0));
        metrics::gauge!(m::RAFT_IS_LEADER).set(if metrics.state == ServerState::Leader {
            1.0
        } else {
            0.0
        });
        metrics::gauge!(m::RAFT_LAST_LOG_INDEX).set(metrics.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!(m::RAFT_APPLIED_INDEX)
            .set(metrics.last_applied.map(|l| l.index).unwrap_or(0) as f64);
        let size = metrics.membership_config.membership().nodes().count();
        metrics::gauge!(m::RAFT_MEMBERS).set(size as f64);
        let reports = member.state.read(|s| s.nodes.clone());
        for (node, report) in reports {
            metrics::gauge!(m::DISK_STATE, "node" => node.to_string())
                .set(report.state as u8 as f64);
        }
        export_path_stats(&member.transport.path_stats());
    }
}

/// The QUIC path of each outgoing connection: datagram size, losses, congestion, RTT.
/// The datagram size is what replication throughput hangs on (every datagram costs a
/// `sendmsg` share, a header and an AEAD call), and losses are what shrink it.
fn export_path_stats(stats: &[(NodeId, quinn::ConnectionStats)]) {
    for (peer, stats) in stats {
        let path = &stats.path;
        let peer = peer.to_string();
        metrics::gauge!(m::QUIC_PATH_MTU, "peer" => peer.clone()).set(f64::from(path.current_mtu));
        metrics::gauge!(m::QUIC_RTT_SECONDS, "peer" => peer.clone()).set(path.rtt.as_secs_f64());
        metrics::counter!(m::QUIC_LOST_PACKETS, "peer" => peer.clone()).absolute(path.lost_packets);
        metrics::counter!(m::QUIC_SENT_PACKETS, "peer" => peer.clone()).absolute(path.sent_packets);
        metrics::counter!(m::QUIC_CONGESTION_EVENTS, "peer" => peer.clone())
            .absolute(path.congestion_events);
        metrics::counter!(m::QUIC_BLACK_HOLES, "peer" => peer).absolute(path.black_holes_detected);
    }
}

/// How long the node's side of Raft has been quiet, as the fast refusal judges it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LeaderSilence {
    /// This node leads: time since a quorum last acknowledged it (`None`: not yet).
    Quorum(Option<Duration>),
    /// Another node leads: time since this node last heard from it (`None`: not yet).
    Leader(NodeId, Option<Duration>),
}

impl LeaderSilence {
    /// A refusal reason once the silence is longer than `patience`.
    ///
    /// The patience is the *maximum* election timeout: only past it has every follower
    /// that saw the same silence started an election. Refusing earlier (at the minimum,
    /// as before) turned away sessions on followers that were merely starved of CPU (at
    /// 2000 live sessions: "no word from leader 3 for 453 ms", with no election). Refusing
    /// is only about speed: a claim on a node cut off from the leader can't commit either,
    /// it just takes [`super::admission::CLAIM_TIMEOUT`] to say so.
    fn problem(self, patience: Duration) -> Option<String> {
        match self {
            LeaderSilence::Quorum(Some(d)) | LeaderSilence::Leader(_, Some(d)) if d <= patience => {
                None
            }
            LeaderSilence::Quorum(Some(d)) => Some(format!(
                "leader has not heard from a quorum for {} ms",
                d.as_millis()
            )),
            LeaderSilence::Quorum(None) => Some("leader has not heard from a quorum yet".into()),
            LeaderSilence::Leader(leader, Some(d)) => Some(format!(
                "no word from leader {leader} for {} ms",
                d.as_millis()
            )),
            LeaderSilence::Leader(leader, None) => {
                Some(format!("no word from leader {leader} yet"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_refusal_waits_out_the_longest_election_timeout() {
        let patience = Duration::from_millis(750);
        let ms = |n| Some(Duration::from_millis(n));
        // Between the shortest and the longest election timeout a follower may still be
        // in touch (its own timer has not fired): no refusal yet.
        assert_eq!(LeaderSilence::Leader(3, ms(453)).problem(patience), None);
        assert_eq!(LeaderSilence::Quorum(ms(750)).problem(patience), None);
        let late = LeaderSilence::Leader(3, ms(751)).problem(patience);
        assert_eq!(late.as_deref(), Some("no word from leader 3 for 751 ms"));
        let alone = LeaderSilence::Quorum(ms(900)).problem(patience);
        assert_eq!(
            alone.as_deref(),
            Some("leader has not heard from a quorum for 900 ms")
        );
        // Never heard at all: refused whatever the patience.
        assert!(LeaderSilence::Leader(2, None).problem(patience).is_some());
        assert!(LeaderSilence::Quorum(None).problem(patience).is_some());
    }
}
