//! Replication: the data plane of a recorder set.
//!
//! Owns moving a live recording's bytes from its owner to the other replicas over QUIC
//! ([`owner`] sends, [`replica`] receives into [`copies`]), what "durable on a majority"
//! means ([`quorum`]), takeovers (new epoch through Raft, fence, reconcile: [`takeover`]),
//! and sealing sessions whose owner and client are both gone ([`orphans`]). Frames are in
//! [`wire`]. It does not own Raft (the cluster module does: it only proposes commands
//! through it) nor HTTP (ingest), and it reaches files only through `storage`.

pub mod copies;
pub mod orphans;
pub mod owner;
pub mod quorum;
pub mod repair;
pub mod replica;
pub mod takeover;
pub mod wire;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::owner::OwnerStreams;
use crate::session::Replicator;
use crate::storage::index::SessionState;

/// How long sealing waits for a majority of the replicas to confirm.
pub const SEAL_WAIT: Duration = Duration::from_secs(10);
/// How long the remaining replicas may still catch up and seal after a majority did.
pub const SEAL_STRAGGLERS: Duration = Duration::from_secs(15);

/// A live session's replication, as its pipeline sees it.
pub struct SessionReplication {
    pub streams: OwnerStreams,
    /// Replica set size, owner included.
    pub set_size: usize,
}

impl Replicator for SessionReplication {
    fn set_size(&self) -> usize {
        self.set_size
    }

    fn offsets(&self) -> watch::Receiver<BTreeMap<u64, u64>> {
        self.streams.offsets()
    }

    fn deposed(&self) -> CancellationToken {
        self.streams.deposed()
    }

    /// Waits (bounded) for a majority of the set to confirm the seal; the remaining
    /// replicas get [`SEAL_STRAGGLERS`] more in the background (see `OwnerStreams`'s drop),
    /// so a dead replica never holds the client's final answer.
    fn seal(&self, len: u64, state: SessionState) -> BoxFuture<'_, usize> {
        let majority_others = self.set_size / 2;
        Box::pin(self.streams.seal(len, state, majority_others, SEAL_WAIT))
    }
}
