//! Raft's network: openraft's RPCs as messages over the QUIC [`Transport`].
//!
//! Owns the cluster RPC vocabulary ([`ClusterRequest`]/[`ClusterResponse`]), the
//! `RaftNetworkFactory` openraft calls, and [`PeerContacts`]: when each peer last answered
//! us (the leader's view of who is up, and `cluster status`'s "last contact"). It does not
//! own connections or TLS (the transport does) nor what the RPCs mean (openraft does).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::transport::{Transport, TransportError};
use super::types::{Command, CommandResponse, NodeId, NodeInfo, TypeConfig};

/// Everything one node asks another over the cluster port (stream kind `Rpc`).
#[derive(Debug, Serialize, Deserialize)]
pub enum ClusterRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower forwards a command to the leader it knows.
    Propose(Command),
    /// A new owner fences this node's copy at `epoch` and asks its durable length.
    Fence {
        session: String,
        epoch: u64,
        node_dir: String,
        file_name: String,
    },
    /// A new owner reads bytes it lacks from this node's copy.
    Fetch {
        session: String,
        from: u64,
        max: u32,
    },
    /// A replica that was away when the session ended reads the rest of the finished
    /// recording ([`crate::replication::repair`]).
    ReadFinished {
        session: String,
        from: u64,
        max: u32,
    },
}

/// The answers, one variant per request.
#[derive(Debug, Serialize, Deserialize)]
pub enum ClusterResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// `Err` carries a reason: not the leader any more, rejected, timed out.
    Propose(Result<CommandResponse, String>),
    /// The copy's durable length, or why it can't be fenced (a newer epoch holds it).
    Fenced(Result<u64, String>),
    Fetched(Result<Vec<u8>, String>),
    Finished(Result<crate::replication::repair::FinishedChunk, String>),
}

/// When each peer last answered an RPC of ours. Heartbeats make this fresh every
/// heartbeat interval for every reachable peer of a leader.
#[derive(Debug, Default)]
pub struct PeerContacts {
    last: Mutex<HashMap<NodeId, Instant>>,
}

impl PeerContacts {
    pub fn record(&self, peer: NodeId) {
        self.lock().insert(peer, Instant::now());
    }

    /// Time since `peer` last answered, if ever.
    pub fn since(&self, peer: NodeId) -> Option<Duration> {
        self.lock().get(&peer).map(Instant::elapsed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Instant>> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// openraft's factory: one [`PeerClient`] per target.
#[derive(Clone)]
pub struct Network {
    pub transport: Arc<Transport>,
    pub contacts: Arc<PeerContacts>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
            contacts: self.contacts.clone(),
            target,
            addr: node.cluster_addr.clone(),
        }
    }
}

/// Sends openraft's RPCs to one peer.
pub struct PeerClient {
    transport: Arc<Transport>,
    contacts: Arc<PeerContacts>,
    target: NodeId,
    /// The peer's QUIC address, from the membership config.
    addr: String,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn send(
        &self,
        request: ClusterRequest,
        option: &RPCOption,
    ) -> Result<ClusterResponse, TransportError> {
        let sent = self
            .transport
            .call(self.target, &self.addr, &request, option.hard_ttl())
            .await;
        match &sent {
            Ok(_) => self.contacts.record(self.target),
            // The connection is gone: dial afresh next time. (After a timeout the transport
            // has already dropped the connection if the peer went silent on it.)
            Err(TransportError::Connection { .. }) => self.transport.forget(self.target),
            Err(_) => {}
        }
        sent
    }

    // The error type is openraft's own signature for these RPCs.
    #[allow(clippy::result_large_err)]
    fn remote<T, E: std::error::Error>(
        &self,
        answer: Result<T, RaftError<NodeId, E>>,
    ) -> Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>> {
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// A transport failure. Only a failure to connect makes openraft back off (Unreachable);
/// a slow answer (timeout) is retried at the next heartbeat, so one late reply from a
/// healthy follower does not stall its replication for the back-off period. Neither does
/// a connection this node closed itself (the last handle of a replaced connection went
/// away): the next call dials afresh.
fn rpc_error<E: std::error::Error>(
    e: TransportError,
) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
    match e {
        TransportError::Connection {
            source: quinn::ConnectionError::LocallyClosed,
            ..
        } => RPCError::Network(NetworkError::new(&e)),
        TransportError::Connect { .. } | TransportError::Connection { .. } => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        other => RPCError::Network(NetworkError::new(&other)),
    }
}

fn mismatched<E: std::error::Error>() -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
    let e = std::io::Error::other("peer answered a different RPC");
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self
            .send(ClusterRequest::AppendEntries(rpc), &option)
            .await
            .map_err(rpc_error)?
        {
            ClusterResponse::AppendEntries(answer) => self.remote(answer),
            _ => Err(mismatched()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self
            .send(ClusterRequest::InstallSnapshot(rpc), &option)
            .await
            .map_err(rpc_error)?
        {
            ClusterResponse::InstallSnapshot(answer) => self.remote(answer),
            _ => Err(mismatched()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self
            .send(ClusterRequest::Vote(rpc), &option)
            .await
            .map_err(rpc_error)?
        {
            ClusterResponse::Vote(answer) => self.remote(answer),
            _ => Err(mismatched()),
        }
    }
}
