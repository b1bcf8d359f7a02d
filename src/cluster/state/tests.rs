use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

const GIB: u64 = 1 << 30;

fn members(ids: &[NodeId]) -> BTreeSet<NodeId> {
    ids.iter().copied().collect()
}

fn claim(id: &str, owner: NodeId, up: &[NodeId]) -> Command {
    claim_at(id, owner, up, 0)
}

fn claim_at(id: &str, owner: NodeId, up: &[NodeId], started_at_ms: i64) -> Command {
    Command::ClaimSession {
        id: id.into(),
        owner,
        node_dir: "100.64.0.1".into(),
        file_name: format!("2026-01-01T00:00:00Z-{id}.cast"),
        started_at_ms,
        up: up.to_vec(),
    }
}

fn end(id: &str, state: ClusterSessionState) -> Command {
    Command::EndSession {
        id: id.into(),
        state,
        epoch: 1,
    }
}

#[test]
fn forgetting_removes_only_ended_sessions_started_before_the_cutoff_and_frees_their_names() {
    let m = members(&[1, 2, 3]);
    let mut st = ClusterState::default();
    for (id, at) in [
        ("old-sealed", 10),
        ("old-live", 10),
        ("old-orphan", 20),
        ("new", 30),
    ] {
        claimed(st.apply(&claim_at(id, 1, &[1, 2, 3], at), &m));
    }
    st.apply(&end("old-sealed", ClusterSessionState::Sealed), &m);
    st.apply(&end("old-orphan", ClusterSessionState::Orphaned), &m);
    st.apply(&end("new", ClusterSessionState::Sealed), &m);
    assert!(st.has_ended_before(30));
    assert!(!st.has_ended_before(10));

    let forget = Command::ForgetEnded {
        started_before_ms: 30,
    };
    assert_eq!(
        st.apply(&forget, &m),
        CommandResponse::Forgotten { sessions: 2 }
    );
    let left: Vec<&str> = st.sessions().keys().map(String::as_str).collect();
    assert_eq!(left, ["new", "old-live"]);
    assert!(!st.has_ended_before(30));
    assert_eq!(
        st.apply(&forget, &m),
        CommandResponse::Forgotten { sessions: 0 }
    );
    // The forgotten recording's name can be claimed again (a later session, same path).
    claimed(st.apply(&claim_at("old-sealed", 2, &[1, 2, 3], 40), &m));
    // A long-lived session stays while live, and goes once it ended.
    st.apply(&end("old-live", ClusterSessionState::Aborted), &m);
    assert_eq!(
        st.apply(&forget, &m),
        CommandResponse::Forgotten { sessions: 1 }
    );
}

fn report(node: NodeId, state: DiskState) -> Command {
    Command::ReportDisk {
        node,
        report: DiskReport {
            state,
            free_bytes: 0,
            total_bytes: 0,
            reported_at_ms: 0,
        },
    }
}

fn claimed(resp: CommandResponse) -> (u64, Vec<NodeId>) {
    match resp {
        CommandResponse::Claimed { epoch, replicas } => (epoch, replicas),
        other => panic!("expected Claimed, got {other:?}"),
    }
}

fn is_rejected(resp: &CommandResponse) -> bool {
    matches!(resp, CommandResponse::Rejected { .. })
}

#[test]
fn claim_picks_owner_then_least_loaded() {
    let m = members(&[1, 2, 3, 4]);
    let mut st = ClusterState::default();
    let (epoch, replicas) = claimed(st.apply(&claim("a", 1, &[1, 2, 3, 4]), &m));
    assert_eq!((epoch, replicas), (1, vec![1, 2, 3]));
    // 2 and 3 now carry one session each, 4 none: 4 first, then the lower id of 2/3.
    let (_, replicas) = claimed(st.apply(&claim("b", 1, &[2, 3, 4]), &m));
    assert_eq!(replicas, vec![1, 4, 2]);
    assert_eq!(st.live_sessions().count(), 2);
    assert_eq!(st.sessions_owned_by(1).count(), 2);
}

#[test]
fn claim_takes_every_node_when_fewer_than_factor() {
    let m = members(&[1, 2]);
    let mut st = ClusterState::default();
    let (_, replicas) = claimed(st.apply(&claim("a", 2, &[1, 2]), &m));
    assert_eq!(replicas, vec![2, 1]);
}

#[test]
fn claim_skips_unreachable_non_members_and_pressed_nodes() {
    let m = members(&[1, 2, 3, 4, 5]);
    let mut st = ClusterState::default();
    st.apply(&report(2, DiskState::Pressure), &m);
    st.apply(&report(3, DiskState::Full), &m);
    // 9 is up but not a member; 5 is a member but not up.
    let (_, replicas) = claimed(st.apply(&claim("a", 1, &[2, 3, 4, 9]), &m));
    assert_eq!(replicas, vec![1, 4]);
}

#[test]
fn claim_rejections_change_nothing() {
    let m = members(&[1, 2, 3]);
    let mut st = ClusterState::default();
    st.apply(&claim("a", 1, &[2, 3]), &m);
    st.apply(&report(2, DiskState::Pressure), &m);
    let before = st.clone();
    assert!(
        is_rejected(&st.apply(&claim("a", 2, &[2, 3]), &m)),
        "duplicate id from another owner"
    );
    assert!(
        is_rejected(&st.apply(&claim("b", 7, &[2, 3]), &m)),
        "non-member owner"
    );
    assert!(
        is_rejected(&st.apply(&claim("b", 2, &[1, 3]), &m)),
        "owner under pressure"
    );
    assert!(
        is_rejected(&st.apply(&claim("", 1, &[2, 3]), &m)),
        "empty id"
    );
    assert!(
        is_rejected(&st.apply(&report(8, DiskState::Ok), &m)),
        "non-member report"
    );
    assert_eq!(st, before);
}

#[test]
fn take_over_bumps_epoch_and_keeps_survivors() {
    let m = members(&[1, 2, 3, 4]);
    let mut st = ClusterState::default();
    claimed(st.apply(&claim("a", 1, &[1, 2, 3]), &m));
    let take = Command::TakeOver {
        id: "a".into(),
        new_owner: 3,
        from_epoch: 1,
        up: vec![2, 3, 4],
    };
    let (epoch, replicas) = claimed(st.apply(&take, &m));
    assert_eq!(epoch, 2);
    assert_eq!(replicas[0], 3);
    assert_eq!(replicas.len(), 3, "the old replicas stay: {replicas:?}");
    let rival = Command::TakeOver {
        id: "a".into(),
        new_owner: 4,
        from_epoch: 1,
        up: vec![2, 3, 4],
    };
    assert!(
        is_rejected(&st.apply(&rival, &m)),
        "a second takeover from epoch 1 loses the race"
    );
    let session = st.session("a").expect("session");
    assert_eq!((session.owner, session.epoch), (3, 2));

    // The old owner at the old epoch is fenced out.
    let stale = Command::EndSession {
        id: "a".into(),
        state: ClusterSessionState::Sealed,
        epoch: 1,
    };
    assert!(is_rejected(&st.apply(&stale, &m)));
    let current = Command::EndSession {
        id: "a".into(),
        state: ClusterSessionState::Sealed,
        epoch: 2,
    };
    assert_eq!(st.apply(&current, &m), CommandResponse::Ok);
    assert_eq!(
        st.apply(&current, &m),
        CommandResponse::Ok,
        "retry is idempotent"
    );
    assert!(
        is_rejected(&st.apply(&take, &m)),
        "ended sessions are not taken over"
    );
}

#[test]
fn take_over_drops_full_replicas_and_rejects_non_members() {
    let m = members(&[1, 2, 3]);
    let mut st = ClusterState::default();
    st.apply(&claim("a", 1, &[2, 3]), &m);
    st.apply(&report(2, DiskState::Full), &m);
    let take = |new_owner| Command::TakeOver {
        id: "a".into(),
        new_owner,
        from_epoch: 1,
        up: vec![1, 2, 3],
    };
    assert!(is_rejected(&st.apply(&take(9), &m)));
    let (epoch, replicas) = claimed(st.apply(&take(3), &m));
    assert_eq!((epoch, replicas), (2, vec![3, 1]));
}

#[test]
fn end_session_rules() {
    let m = members(&[1]);
    let mut st = ClusterState::default();
    st.apply(&claim("a", 1, &[]), &m);
    let end = |state, epoch| Command::EndSession {
        id: "a".into(),
        state,
        epoch,
    };
    assert!(is_rejected(
        &st.apply(&end(ClusterSessionState::Live, 1), &m)
    ));
    assert!(is_rejected(
        &st.apply(&end(ClusterSessionState::Sealed, 0), &m)
    ));
    assert!(is_rejected(
        &st.apply(&end(ClusterSessionState::Sealed, 2), &m)
    ));
    assert_eq!(
        st.apply(&end(ClusterSessionState::Aborted, 1), &m),
        CommandResponse::Ok
    );
    assert!(is_rejected(
        &st.apply(&end(ClusterSessionState::Sealed, 1), &m)
    ));
    assert_eq!(st.live_sessions().count(), 0);
}

#[test]
fn settings_are_validated() {
    let m = members(&[1]);
    let mut st = ClusterState::default();
    let bad = Settings {
        clear_used_percent: 90,
        ..Settings::default()
    };
    assert!(is_rejected(&st.apply(&Command::SetSettings(bad), &m)));
    let zero = Settings {
        replication_factor: 0,
        ..Settings::default()
    };
    assert!(is_rejected(&st.apply(&Command::SetSettings(zero), &m)));
    let two = Settings {
        replication_factor: 2,
        ..Settings::default()
    };
    assert_eq!(
        st.apply(&Command::SetSettings(two.clone()), &m),
        CommandResponse::Ok
    );
    assert_eq!(st.settings, two);
}

#[test]
fn retain_members_drops_reports_of_removed_nodes() {
    let mut st = ClusterState::default();
    st.apply(&report(1, DiskState::Ok), &members(&[1, 2]));
    st.apply(&report(2, DiskState::Full), &members(&[1, 2]));
    st.retain_members(&members(&[1]));
    assert_eq!(st.nodes.keys().copied().collect::<Vec<_>>(), vec![1]);
}

/// 100 GiB disk: percentages are whole GiB, and the 1 GiB minimum free never bites
/// above 1% free.
fn classify_100g(previous: DiskState, used_gib: u64) -> DiskState {
    let total = 100 * GIB;
    classify(
        &Settings::default(),
        previous,
        total - used_gib * GIB,
        total,
    )
}

#[test]
fn classify_thresholds() {
    use DiskState::*;
    assert_eq!(classify_100g(Ok, 84), Ok);
    assert_eq!(classify_100g(Ok, 85), Pressure);
    assert_eq!(classify_100g(Ok, 94), Pressure);
    assert_eq!(classify_100g(Ok, 95), Full);
    assert_eq!(classify_100g(Pressure, 100), Full);
}

#[test]
fn classify_hysteresis() {
    use DiskState::*;
    // Once pressed, it takes going below 80% to clear.
    assert_eq!(classify_100g(Pressure, 84), Pressure);
    assert_eq!(classify_100g(Pressure, 80), Pressure);
    assert_eq!(classify_100g(Pressure, 79), Ok);
    assert_eq!(classify_100g(Full, 94), Pressure);
    assert_eq!(classify_100g(Full, 81), Pressure);
    assert_eq!(classify_100g(Full, 79), Ok);
}

#[test]
fn classify_min_free_bytes() {
    use DiskState::*;
    let s = Settings::default();
    // A 10 GiB disk half used is fine; a 1.5 GiB disk 40% used has only 0.9 GiB free:
    // pressure by bytes alone.
    assert_eq!(classify(&s, Ok, 5 * GIB, 10 * GIB), Ok);
    let total = 3 * GIB / 2;
    let free = total * 6 / 10;
    assert_eq!(classify(&s, Ok, free, total), Pressure);
    assert_eq!(classify(&s, Pressure, free, total), Pressure);
    assert_eq!(classify(&s, Pressure, 5 * GIB, 10 * GIB), Ok);
}

#[test]
fn classify_degenerate_inputs() {
    let s = Settings::default();
    assert_eq!(classify(&s, DiskState::Ok, 0, 0), DiskState::Full);
    // More free than total (racy statvfs) counts as empty.
    assert_eq!(
        classify(&s, DiskState::Ok, 20 * GIB, 10 * GIB),
        DiskState::Ok
    );
    assert_eq!(classify(&s, DiskState::Ok, 0, u64::MAX), DiskState::Full);
}

// ---- property tests over random command sequences ----

const MAX_NODE: NodeId = 6;
const IDS: [&str; 4] = ["s0", "s1", "s2", "s3"];

fn node() -> impl Strategy<Value = NodeId> {
    0..=MAX_NODE
}

fn disk_state() -> impl Strategy<Value = DiskState> {
    prop_oneof![
        Just(DiskState::Ok),
        Just(DiskState::Pressure),
        Just(DiskState::Full)
    ]
}

fn end_state() -> impl Strategy<Value = ClusterSessionState> {
    prop_oneof![
        Just(ClusterSessionState::Live),
        Just(ClusterSessionState::Sealed),
        Just(ClusterSessionState::Aborted),
        Just(ClusterSessionState::Orphaned)
    ]
}

fn session_id() -> impl Strategy<Value = String> {
    prop::sample::select(&IDS[..]).prop_map(String::from)
}

fn up() -> impl Strategy<Value = Vec<NodeId>> {
    prop::collection::vec(node(), 0..8)
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        3 => (node(), disk_state()).prop_map(|(n, s)| report(n, s)),
        4 => (session_id(), node(), up()).prop_map(|(id, owner, up)| claim(&id, owner, &up)),
        2 => (session_id(), node(), 1..4u64, up()).prop_map(|(id, new_owner, from_epoch, up)| {
            Command::TakeOver { id, new_owner, from_epoch, up }
        }),
        3 => (session_id(), end_state(), 0..4u64)
            .prop_map(|(id, state, epoch)| Command::EndSession { id, state, epoch }),
        1 => (0..5usize).prop_map(|replication_factor| Command::SetSettings(Settings {
            replication_factor,
            ..Settings::default()
        })),
        2 => (session_id(), node(), up(), 0..3i64)
            .prop_map(|(id, owner, up, at)| claim_at(&id, owner, &up, at)),
        1 => (0..4i64).prop_map(|started_before_ms| Command::ForgetEnded { started_before_ms }),
    ]
}

fn membership() -> impl Strategy<Value = BTreeSet<NodeId>> {
    prop::collection::btree_set(node(), 1..=(MAX_NODE as usize + 1))
}

/// Checks one step; `before` is the state the command was applied to.
fn check_step(
    before: &ClusterState,
    cmd: &Command,
    resp: &CommandResponse,
    after: &ClusterState,
    members: &BTreeSet<NodeId>,
) -> Result<(), TestCaseError> {
    if is_rejected(resp) {
        prop_assert_eq!(before, after, "a rejected command changed the state");
    }
    let forgotten_before = match cmd {
        Command::ForgetEnded { started_before_ms } => Some(*started_before_ms),
        _ => None,
    };
    for (id, old) in &before.sessions {
        let forgettable = forgotten_before.is_some_and(|cutoff| {
            old.state != ClusterSessionState::Live && old.started_at_ms < cutoff
        });
        let new = after.sessions.get(id);
        if forgettable {
            prop_assert!(
                new.is_none(),
                "ended session {} older than the cutoff kept",
                id
            );
            continue;
        }
        prop_assert!(new.is_some(), "session {} vanished", id);
        let new = new.expect("checked");
        prop_assert!(new.epoch >= old.epoch, "epoch of {} went down", id);
        if old.state != ClusterSessionState::Live {
            prop_assert_eq!(new.state, old.state, "ended session {} changed state", id);
        }
    }
    // The derived lookups say what a scan of the whole table would.
    let live: Vec<&str> = after
        .sessions
        .values()
        .filter(|s| s.state == ClusterSessionState::Live)
        .map(|s| s.id.as_str())
        .collect();
    let indexed: Vec<&str> = after.live_sessions().map(|s| s.id.as_str()).collect();
    prop_assert_eq!(live, indexed, "live index out of step");
    let names: BTreeSet<(String, String)> = after.sessions.values().map(name_of).collect();
    prop_assert_eq!(&names, &after.names, "name index out of step");
    for session in after.sessions.values() {
        prop_assert_eq!(session.replicas.first(), Some(&session.owner));
        let distinct: BTreeSet<_> = session.replicas.iter().collect();
        prop_assert_eq!(distinct.len(), session.replicas.len(), "{:?}", session);
        prop_assert!(session.epoch >= 1);
    }
    match (cmd, resp) {
        (Command::ClaimSession { id, .. }, CommandResponse::Claimed { epoch, replicas })
            if before.sessions.contains_key(id) =>
        {
            // A repeated claim: the first answer again, nothing changed.
            let existing = &before.sessions[id];
            prop_assert_eq!(*epoch, existing.epoch);
            prop_assert_eq!(replicas, &existing.replicas);
            prop_assert_eq!(before, after, "a repeated claim changed the state");
        }
        (
            Command::ClaimSession { id, owner, up, .. },
            CommandResponse::Claimed { epoch, replicas },
        ) => {
            prop_assert_eq!(*epoch, 1);
            for n in replicas {
                prop_assert_eq!(before.disk_state(*n), DiskState::Ok, "pressed node chosen");
                prop_assert!(members.contains(n));
                prop_assert!(n == owner || up.contains(n));
            }
            // "3, or every node when fewer": as many as wanted or as qualify.
            let qualifying = up
                .iter()
                .filter(|n| *n != owner && members.contains(n))
                .filter(|n| before.disk_state(**n) == DiskState::Ok)
                .collect::<BTreeSet<_>>()
                .len();
            let wanted = before.settings.replication_factor.max(1);
            prop_assert_eq!(replicas.len(), wanted.min(1 + qualifying));
            prop_assert_eq!(&after.sessions[id].replicas, replicas);
        }
        (Command::EndSession { id, epoch, .. }, _)
            if before.sessions.get(id).is_some_and(|s| s.epoch != *epoch) =>
        {
            prop_assert!(is_rejected(resp), "stale epoch accepted");
            prop_assert_eq!(&before.sessions[id], &after.sessions[id]);
        }
        (
            Command::TakeOver {
                id,
                new_owner,
                from_epoch,
                ..
            },
            CommandResponse::Claimed { epoch, .. },
        ) if before.sessions[id].epoch == from_epoch + 1
            && before.sessions[id].owner == *new_owner =>
        {
            // A repeated takeover: the first answer again, nothing changed.
            prop_assert_eq!(*epoch, before.sessions[id].epoch);
            prop_assert_eq!(before, after, "a repeated takeover changed the state");
        }
        (Command::TakeOver { id, .. }, CommandResponse::Claimed { epoch, .. }) => {
            prop_assert_eq!(*epoch, before.sessions[id].epoch + 1);
        }
        (Command::ForgetEnded { .. }, CommandResponse::Forgotten { sessions }) => {
            let removed = before.sessions.len() - after.sessions.len();
            prop_assert_eq!(*sessions, removed as u64);
        }
        (Command::ForgetEnded { .. }, other) => {
            prop_assert!(false, "ForgetEnded answered {:?}", other);
        }
        _ => {}
    }
    Ok(())
}

proptest! {
    #[test]
    fn invariants_hold_over_random_commands(
        members in membership(),
        cmds in prop::collection::vec(command(), 1..60),
    ) {
        let mut state = ClusterState::default();
        let mut epochs: BTreeMap<String, u64> = BTreeMap::new();
        for cmd in &cmds {
            let before = state.clone();
            let resp = state.apply(cmd, &members);
            check_step(&before, cmd, &resp, &state, &members)?;
            // A forgotten id may be claimed again: a new session, starting at epoch 1.
            epochs.retain(|id, _| state.sessions.contains_key(id));
            for (id, s) in &state.sessions {
                let last = epochs.insert(id.clone(), s.epoch).unwrap_or(0);
                prop_assert!(s.epoch >= last);
            }
        }
    }

    #[test]
    fn apply_is_deterministic(
        members in membership(),
        cmds in prop::collection::vec(command(), 1..40),
    ) {
        let mut a = ClusterState::default();
        let mut b = ClusterState::default();
        for cmd in &cmds {
            prop_assert_eq!(a.apply(cmd, &members), b.apply(cmd, &members));
        }
        prop_assert_eq!(a, b);
    }

    #[test]
    fn classify_is_monotone_in_usage(
        previous in disk_state(),
        total in 1u64..(1 << 50),
        a in 0u64..(1 << 50),
        b in 0u64..(1 << 50),
    ) {
        // More free space never yields a worse state (Ok < Pressure < Full).
        let rank = |s: DiskState| match s { DiskState::Ok => 0, DiskState::Pressure => 1, DiskState::Full => 2 };
        let s = Settings::default();
        let (more, less) = if a >= b { (a, b) } else { (b, a) };
        prop_assert!(rank(classify(&s, previous, more, total)) <= rank(classify(&s, previous, less, total)));
    }

    #[test]
    fn classify_clears_only_below_clear_mark(
        total in (2 * GIB)..(1 << 50),
        free in 0u64..(1 << 50),
    ) {
        let s = Settings::default();
        let free = free.min(total);
        // used/total < pct/100, exactly, in integers.
        let below = |pct: u8| u128::from(total - free) * 100 < u128::from(pct) * u128::from(total);
        if classify(&s, DiskState::Pressure, free, total) == DiskState::Ok {
            prop_assert!(below(s.clear_used_percent));
            prop_assert!(free >= s.pressure_min_free_bytes);
        }
        if classify(&s, DiskState::Ok, free, total) == DiskState::Pressure {
            prop_assert!(!below(s.pressure_used_percent) || free < s.pressure_min_free_bytes);
        }
    }
}

#[test]
fn a_recording_name_is_unique_across_the_set() {
    let m = members(&[1, 2, 3]);
    let mut st = ClusterState::default();
    claimed(st.apply(&claim("a", 1, &[1, 2, 3]), &m));
    let mut same_name = claim("b", 2, &[1, 2, 3]);
    if let Command::ClaimSession {
        file_name,
        node_dir,
        ..
    } = &mut same_name
    {
        // claim() names files after the session id; give b the name a has.
        *file_name = match st.session("a") {
            Some(a) => a.file_name.clone(),
            None => String::new(),
        };
        *node_dir = st
            .session("a")
            .map(|a| a.node_dir.clone())
            .unwrap_or_default();
    }
    match st.apply(&same_name, &m) {
        CommandResponse::Rejected { reason } => {
            assert!(reason.starts_with(super::NAME_TAKEN), "{reason}")
        }
        other => panic!("claimed a taken name: {other:?}"),
    }
}

#[test]
fn a_batch_applies_each_command_on_its_own() {
    let m = members(&[1, 2, 3]);
    let mut st = ClusterState::default();
    let batch = Command::Batch(vec![
        claim("a", 1, &[1, 2, 3]),
        claim("a", 2, &[1, 2, 3]),
        claim("b", 2, &[1, 2, 3]),
        Command::Batch(vec![]),
    ]);
    let CommandResponse::Batch(answers) = st.apply(&batch, &m) else {
        panic!("a batch answers with a batch");
    };
    assert_eq!(answers.len(), 4);
    assert!(matches!(answers[0], CommandResponse::Claimed { .. }));
    assert!(is_rejected(&answers[1]), "duplicate id in the same batch");
    assert!(matches!(answers[2], CommandResponse::Claimed { .. }));
    assert!(is_rejected(&answers[3]), "no nesting");
    assert_eq!(st.sessions.len(), 2);
}

#[test]
fn a_snapshot_round_trip_rebuilds_the_live_and_name_lookups_and_keeps_the_stored_fields() {
    let members = BTreeSet::from([1, 2, 3]);
    let mut st = ClusterState::default();
    for (id, owner) in [("a", 1), ("b", 2), ("c", 3)] {
        assert!(!is_rejected(
            &st.apply(&claim(id, owner, &[1, 2, 3]), &members)
        ));
    }
    let ended = Command::EndSession {
        id: "b".into(),
        state: ClusterSessionState::Sealed,
        epoch: 1,
    };
    assert!(!is_rejected(&st.apply(&ended, &members)));
    let json = serde_json::to_value(&st).expect("encode");
    let keys: Vec<&str> = json
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["nodes", "sessions", "settings"],
        "derived lookups must not be stored"
    );
    let back: ClusterState = serde_json::from_value(json).expect("decode");
    assert_eq!(back, st);
    let live: Vec<&str> = back.live_sessions().map(|s| s.id.as_str()).collect();
    assert_eq!(live, ["a", "c"]);
    // The name of an ended session stays taken.
    let again = Command::ClaimSession {
        id: "d".into(),
        owner: 1,
        node_dir: st.sessions["b"].node_dir.clone(),
        file_name: st.sessions["b"].file_name.clone(),
        started_at_ms: 0,
        up: vec![1, 2, 3],
    };
    let mut back = back;
    assert!(is_rejected(&back.apply(&again, &members)));
}

#[test]
fn a_repeated_claim_or_takeover_gets_the_first_answer_and_changes_nothing() {
    let m = members(&[1, 2, 3]);
    let mut st = ClusterState::default();
    let first = st.apply(&claim("a", 1, &[1, 2, 3]), &m);
    assert!(matches!(first, CommandResponse::Claimed { epoch: 1, .. }));
    let after_first = st.clone();
    // Retried with another view of who is up: still the first answer.
    assert_eq!(st.apply(&claim("a", 1, &[1, 2]), &m), first);
    assert_eq!(st, after_first);
    // The same id claimed by another node is a conflict, not a retry.
    assert!(is_rejected(&st.apply(&claim("a", 2, &[1, 2, 3]), &m)));

    let take = Command::TakeOver {
        id: "a".into(),
        new_owner: 2,
        from_epoch: 1,
        up: vec![1, 2, 3],
    };
    let taken = st.apply(&take, &m);
    assert!(matches!(taken, CommandResponse::Claimed { epoch: 2, .. }));
    let after_take = st.clone();
    assert_eq!(st.apply(&take, &m), taken);
    assert_eq!(st, after_take);
    // Another node racing from the old epoch still loses.
    let rival = Command::TakeOver {
        id: "a".into(),
        new_owner: 3,
        from_epoch: 1,
        up: vec![1, 2, 3],
    };
    assert!(is_rejected(&st.apply(&rival, &m)));
    // Once taken over, the original claim is no longer a retry.
    assert!(is_rejected(&st.apply(&claim("a", 1, &[1, 2, 3]), &m)));
}
