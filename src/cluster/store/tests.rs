use std::collections::BTreeSet;

use openraft::error::{InstallSnapshotError, RPCError, RaftError as RaftRpcError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorageExt;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Config, Raft, RaftLogReader, StorageHelper};
use tempfile::TempDir;

use super::*;
use crate::cluster::types::{ClusterSessionState, Command};

/// Each suite case gets a fresh store in its own temporary statedir, removed on drop.
struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), RaftError> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log, sm) = open(dir.path())
            .await
            .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log, sm))
    }
}

/// openraft's storage conformance suite. Not a `#[tokio::test]`: it runs each case in
/// its own runtime.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(TempStoreBuilder).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

fn normal(term: u64, index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn membership(term: u64, index: u64, voters: &[NodeId]) -> Entry<TypeConfig> {
    let voters: BTreeSet<NodeId> = voters.iter().copied().collect();
    let nodes = voters
        .iter()
        .map(|id| {
            let info = NodeInfo {
                cluster_addr: format!("10.0.0.{id}:7000"),
                ingest_addr: format!("10.0.0.{id}:80"),
            };
            (*id, info)
        })
        .collect::<std::collections::BTreeMap<_, _>>();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    }
}

fn claim(id: &str, owner: NodeId) -> Command {
    Command::ClaimSession {
        id: id.into(),
        owner,
        node_dir: "100.64.0.1".into(),
        file_name: format!("{id}.cast"),
        started_at_ms: 1,
        up: vec![1, 2, 3],
    }
}

fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

#[tokio::test]
async fn log_vote_and_committed_survive_reopen() {
    let dir = TempDir::new().expect("tempdir");
    {
        let (mut log, _sm) = open(dir.path()).await.expect("open");
        log.blocking_append([blank(1, 1), membership(1, 2, &[1, 2, 3]), blank(2, 3)])
            .await
            .expect("append");
        log.save_vote(&Vote::new(2, 1)).await.expect("vote");
        log.save_committed(Some(log_id(2, 3)))
            .await
            .expect("committed");
        log.purge(log_id(1, 1)).await.expect("purge");
    }
    let (mut log, _sm) = open(dir.path()).await.expect("reopen");
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 1)));
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(2, 3))
    );
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(2, 3)));
    let entries = log.try_get_log_entries(..).await.expect("entries");
    assert_eq!(indexes(&entries), vec![2, 3]);

    log.truncate(log_id(2, 3)).await.expect("truncate");
    let mut reader = log.get_log_reader().await;
    assert_eq!(
        indexes(&reader.try_get_log_entries(0..10).await.expect("read")),
        vec![2]
    );
}

#[tokio::test]
async fn state_machine_restores_from_snapshot_then_replays_log() {
    let dir = TempDir::new().expect("tempdir");
    let entries = vec![
        membership(1, 1, &[1, 2, 3]),
        normal(1, 2, claim("a", 1)),
        normal(1, 3, claim("b", 2)),
    ];
    let later = normal(1, 4, claim("c", 3));
    {
        let (mut log, mut sm) = open(dir.path()).await.expect("open");
        log.blocking_append(entries.clone()).await.expect("append");
        let replies = sm.apply(entries).await.expect("apply");
        assert!(matches!(
            replies[1],
            CommandResponse::Claimed { epoch: 1, .. }
        ));

        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot");
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 3)));
        log.purge(log_id(1, 3)).await.expect("purge");

        // One more committed entry after the snapshot: restart must replay it.
        log.blocking_append([later.clone()]).await.expect("append");
        sm.apply([later]).await.expect("apply");
        log.save_committed(Some(log_id(1, 4)))
            .await
            .expect("committed");
    }

    let (mut log, mut sm) = open(dir.path()).await.expect("reopen");
    let reader = sm.reader();
    assert_eq!(
        reader.last_applied(),
        Some(log_id(1, 3)),
        "from the snapshot"
    );
    assert_eq!(reader.read(|s| s.sessions().len()), 2);
    assert_eq!(
        reader.last_membership().log_id(),
        &Some(log_id(1, 1)),
        "membership comes back with the snapshot"
    );
    let current = sm
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("a snapshot");
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 3)));

    // What openraft does on start: re-apply committed entries after the snapshot.
    StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .expect("initial state");
    assert_eq!(reader.last_applied(), Some(log_id(1, 4)));
    let owners: Vec<NodeId> = reader.read(|s| s.live_sessions().map(|x| x.owner).collect());
    assert_eq!(owners, vec![1, 2, 3]);
}

#[tokio::test]
async fn installed_snapshot_replaces_state_and_persists() {
    let leader_dir = TempDir::new().expect("tempdir");
    let follower_dir = TempDir::new().expect("tempdir");
    let (_log, mut leader) = open(leader_dir.path()).await.expect("open");
    leader
        .apply([membership(1, 1, &[1, 2]), normal(1, 2, claim("a", 1))])
        .await
        .expect("apply");
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    {
        let (_log, mut follower) = open(follower_dir.path()).await.expect("open");
        follower.apply([blank(1, 1)]).await.expect("apply");
        follower
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .expect("install");
        assert_eq!(follower.reader().read(|s| s.sessions().len()), 1);
    }
    let (_log, follower) = open(follower_dir.path()).await.expect("reopen");
    let reader = follower.reader();
    assert_eq!(reader.last_applied(), Some(log_id(1, 2)));
    assert_eq!(
        reader.read(|s| s.session("a").map(|x| x.state)),
        Some(ClusterSessionState::Live)
    );
}

#[tokio::test]
async fn snapshot_data_with_wrong_meta_or_format_is_refused() {
    let dir = TempDir::new().expect("tempdir");
    let (_log, mut sm) = open(dir.path()).await.expect("open");
    sm.apply([membership(1, 1, &[1])]).await.expect("apply");
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");

    let mut wrong_meta = snap.meta.clone();
    wrong_meta.last_log_id = Some(log_id(1, 9));
    let data = snap.snapshot.clone();
    assert!(sm.install_snapshot(&wrong_meta, data).await.is_err());

    let mut future = snap.snapshot.into_inner();
    future[0] = 2; // format 2, as varint
    assert!(sm
        .install_snapshot(&snap.meta, Box::new(Cursor::new(future)))
        .await
        .is_err());
    assert_eq!(
        sm.reader().last_applied(),
        Some(log_id(1, 1)),
        "state untouched"
    );
}

#[test]
fn decode_refuses_unknown_format_and_trailing_bytes() {
    let bytes = encode("x", 1, &42u64).expect("encode");
    assert_eq!(decode::<u64>("x", 1, &bytes).expect("decode"), 42);
    assert!(matches!(
        decode::<u64>("x", 2, &bytes),
        Err(StoreError::Format {
            found: 1,
            expected: 2,
            ..
        })
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        decode::<u64>("x", 1, &longer),
        Err(StoreError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn append_refuses_a_hole() {
    let dir = TempDir::new().expect("tempdir");
    let (mut log, _sm) = open(dir.path()).await.expect("open");
    log.blocking_append([blank(1, 1)]).await.expect("append");
    assert!(log.blocking_append([blank(1, 3)]).await.is_err());
    log.blocking_append([blank(1, 2)])
        .await
        .expect("consecutive append");
}

#[test]
fn index_ranges() {
    assert_eq!(index_range(&(3..3)), None);
    assert_eq!(index_range(&(Bound::Included(5), Bound::Excluded(3))), None);
    assert_eq!(index_range(&(3..=3)), Some((3, Some(4))));
    assert_eq!(index_range(&(..)), Some((0, None)));
    assert_eq!(index_range(&(7..=u64::MAX)), Some((7, None)));
    assert_eq!(
        index_range(&(Bound::Excluded(u64::MAX), Bound::Unbounded)),
        None
    );
}

// ---- with a real openraft instance ----

/// A network for a single-node cluster: it is never asked to reach anyone.
struct Isolated;

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, NodeInfo, E> {
    RPCError::Unreachable(Unreachable::new(&io::Error::other("single-node test")))
}

impl RaftNetworkFactory<TypeConfig> for Isolated {
    type Network = Isolated;

    async fn new_client(&mut self, _target: NodeId, _node: &NodeInfo) -> Isolated {
        Isolated
    }
}

impl RaftNetwork<TypeConfig> for Isolated {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftRpcError<NodeId>>>
    {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftRpcError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftRpcError<NodeId>>> {
        Err(unreachable())
    }
}

async fn start_raft(dir: &Path) -> (Raft<TypeConfig>, StateReader) {
    let config = Config {
        // Purge everything a snapshot covers, so that a restart must use the snapshot.
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    };
    let config = Arc::new(config.validate().expect("config"));
    let (log, sm) = open(dir).await.expect("open");
    let reader = sm.reader();
    let raft = Raft::new(1, config, Isolated, log, sm).await.expect("raft");
    (raft, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_raft_commits_snapshots_and_restarts() {
    let dir = TempDir::new().expect("tempdir");
    let timeout = Some(std::time::Duration::from_secs(10));
    let claim_one = |id: &str| Command::ClaimSession {
        id: id.into(),
        owner: 1,
        node_dir: "100.64.0.1".into(),
        file_name: format!("{id}.cast"),
        started_at_ms: 1,
        up: vec![1],
    };
    {
        let (raft, reader) = start_raft(dir.path()).await;
        let node = NodeInfo {
            cluster_addr: "127.0.0.1:7000".into(),
            ingest_addr: "127.0.0.1:8080".into(),
        };
        raft.initialize(std::collections::BTreeMap::from([(1, node)]))
            .await
            .expect("initialize");
        raft.wait(timeout)
            .current_leader(1, "leader")
            .await
            .expect("leader");
        let resp = raft.client_write(claim_one("a")).await.expect("write");
        assert_eq!(
            resp.data,
            CommandResponse::Claimed {
                epoch: 1,
                replicas: vec![1]
            }
        );
        let snapshot_at = resp.log_id.index;
        raft.trigger().snapshot().await.expect("trigger snapshot");
        raft.wait(timeout)
            .purged(Some(resp.log_id), "log purged up to the snapshot")
            .await
            .expect("purged");
        let resp = raft.client_write(claim_one("b")).await.expect("write");
        assert!(resp.log_id.index > snapshot_at);
        assert_eq!(reader.read(|s| s.live_sessions().count()), 2);
        raft.shutdown().await.expect("shutdown");
    }
    let (raft, reader) = start_raft(dir.path()).await;
    // Raft::new restored the snapshot and re-applied the committed entry after it.
    let ids: Vec<String> = reader.read(|s| s.sessions().keys().cloned().collect());
    assert_eq!(ids, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(
        members_of(reader.last_membership().membership()),
        BTreeSet::from([1])
    );
    raft.wait(timeout)
        .current_leader(1, "leader again")
        .await
        .expect("leader");
    // The restored state knows "a": a claim of it by its owner is a retry and gets
    // "a"'s first answer (epoch 1), while a claim of it from another owner is refused.
    let resp = raft.client_write(claim_one("a")).await.expect("write");
    assert!(matches!(
        resp.data,
        CommandResponse::Claimed { epoch: 1, .. }
    ));
    let mut rival = claim_one("a");
    if let Command::ClaimSession { started_at_ms, .. } = &mut rival {
        *started_at_ms += 1;
    }
    let resp = raft.client_write(rival).await.expect("write");
    assert!(matches!(resp.data, CommandResponse::Rejected { .. }));
    raft.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn the_committed_hint_waits_for_the_next_durable_write_or_the_shutdown() {
    let dir = TempDir::new().expect("tempdir");
    let on_disk = |log: &LogStore| {
        log.db
            .read_meta::<LogId<NodeId>>(super::KEY_COMMITTED)
            .expect("read meta")
    };
    {
        let (mut log, _sm) = open(dir.path()).await.expect("open");
        log.blocking_append([blank(1, 1), blank(1, 2)])
            .await
            .expect("append");
        log.save_committed(Some(log_id(1, 1)))
            .await
            .expect("committed");
        assert_eq!(on_disk(&log), None, "no transaction of its own");
        log.blocking_append([blank(1, 3)]).await.expect("append");
        assert_eq!(on_disk(&log), Some(log_id(1, 1)), "carried by the append");
        log.save_committed(Some(log_id(1, 2)))
            .await
            .expect("committed");
        assert_eq!(on_disk(&log), Some(log_id(1, 1)));
        assert_eq!(
            log.read_committed().await.expect("committed"),
            Some(log_id(1, 2)),
            "read back from memory"
        );
    }
    let (mut log, _sm) = open(dir.path()).await.expect("reopen");
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(1, 2)),
        "written when the store was dropped"
    );
}

#[tokio::test]
async fn reads_of_the_newest_entries_agree_with_the_database_through_truncate_and_purge() {
    let dir = TempDir::new().expect("tempdir");
    let (mut log, _sm) = open(dir.path()).await.expect("open");
    let mut reader = log.get_log_reader().await;
    let all: Vec<_> = (1..=6).map(|i| blank(1, i)).collect();
    log.blocking_append(all).await.expect("append");
    assert_eq!(
        indexes(&reader.try_get_log_entries(2..5).await.expect("read")),
        vec![2, 3, 4]
    );
    // A conflicting suffix: truncate, then the new leader's entries.
    log.truncate(log_id(1, 5)).await.expect("truncate");
    log.blocking_append([blank(2, 5)]).await.expect("append");
    // Bounded (from the copy) and open-ended (from the database): the same entries.
    for entries in [
        reader.try_get_log_entries(4..6).await.expect("read"),
        reader.try_get_log_entries(4..).await.expect("read"),
    ] {
        assert_eq!(
            entries.iter().map(|e| e.log_id).collect::<Vec<_>>(),
            vec![log_id(1, 4), log_id(2, 5)]
        );
    }
    log.purge(log_id(1, 3)).await.expect("purge");
    assert_eq!(
        indexes(&reader.try_get_log_entries(0..10).await.expect("read")),
        vec![4, 5]
    );
    // A fresh handle on the same database (no copy yet) sees the same log.
    drop((log, reader, _sm));
    let (mut log, _sm) = open(dir.path()).await.expect("reopen");
    let entries = log.try_get_log_entries(0..10).await.expect("read");
    assert_eq!(
        entries.iter().map(|e| e.log_id).collect::<Vec<_>>(),
        vec![log_id(1, 4), log_id(2, 5)]
    );
}

#[tokio::test]
async fn entries_older_than_the_copy_of_the_newest_come_from_the_database() {
    let dir = TempDir::new().expect("tempdir");
    let (mut log, _sm) = open(dir.path()).await.expect("open");
    // Whole batches of 100, more than the copy holds.
    let total = (super::RECENT_ENTRIES as u64 / 100 + 2) * 100;
    for start in (1..=total).step_by(100) {
        let batch: Vec<_> = (start..start + 100).map(|i| blank(1, i)).collect();
        log.blocking_append(batch).await.expect("append");
    }
    let entries = log.try_get_log_entries(1..=total).await.expect("read");
    assert_eq!(indexes(&entries), (1..=total).collect::<Vec<_>>());
    let newest = log
        .try_get_log_entries(total - 9..=total)
        .await
        .expect("read");
    assert_eq!(indexes(&newest), (total - 9..=total).collect::<Vec<_>>());
}
