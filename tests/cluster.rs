//! A recorder set of real `quorumcast node` processes on loopback: election, failover,
//! restarts, mutual TLS, partitions (iptables), disk pressure (a real small tmpfs),
//! membership changes and snapshot catch-up.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::set::*;
use common::*;
use serde_json::Value;

#[test]
fn three_nodes_elect_a_leader_and_claim_sessions_through_raft() -> Result<()> {
    let set = Set::start(3, "")?;
    let (code, body) = set.upload(1)?;
    assert_eq!(code, 200, "{body}");
    let table = set.sealed_sessions(0, 1)?;
    let s = &table[0];
    assert_eq!(s["owner"], 2, "owner is the node that took the session");
    assert_eq!(s["epoch"], 1);
    let replicas: Vec<u64> = s["replicas"]
        .as_array()
        .context("replicas")?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(replicas.len(), 3);
    assert_eq!(replicas[0], 2);
    assert_eq!(s["state"], "sealed");
    let metrics = String::from_utf8(
        curl(&["-s", &format!("http://{}/metrics", set.members[1].ingest)])?.stdout,
    )?;
    for name in [
        "quorumcast_raft_term",
        "quorumcast_raft_is_leader",
        "quorumcast_claim_seconds_bucket",
        "quorumcast_raft_members 3",
        "quorumcast_raft_leader_id ",
        "quorumcast_raft_last_log_index ",
        "quorumcast_raft_applied_index ",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
    // Every member's disk state, as the set knows it (0 = ok); reported within a
    // disk check interval of start-up, hence the wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = String::from_utf8(
            curl(&["-s", &format!("http://{}/metrics", set.members[1].ingest)])?.stdout,
        )?;
        let ok = (1..=3).all(|node| {
            metrics
                .lines()
                .any(|l| l == format!("quorumcast_disk_state{{node=\"{node}\"}} 0"))
        });
        if ok {
            break;
        }
        if Instant::now() > deadline {
            bail!("no disk state of every member in:\n{metrics}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
fn killing_the_leader_elects_another_and_the_old_one_rejoins() -> Result<()> {
    let mut set = Set::start(3, "")?;
    let leader = set.wait_leader(&[])?;
    let term_before = set.status(leader)?["term"].as_u64().context("term")?;
    set.members[leader].node.as_mut().context("leader")?.kill9();
    let killed = Instant::now();
    let new_leader = set.wait_leader_other_than(&[leader], Some(leader))?;
    let elapsed = killed.elapsed();
    assert_ne!(new_leader, leader);
    // The window: a follower notices after at most election_max, then one election round.
    assert!(
        elapsed < Duration::from_millis(3 * ELECTION_MAX_MS),
        "new leader after {elapsed:?}"
    );
    let survivor = if new_leader == 0 { 1 } else { 0 };
    let survivor = if survivor == leader { 2 } else { survivor };
    let (code, _) = set.upload(survivor)?;
    assert_eq!(code, 200, "the majority takes sessions after failover");
    // The new leader never heard from the killed node: it is not up for new replica sets,
    // so the session above got the two survivors.
    let killed_id = set.members[leader].id;
    assert_eq!(member_up(&set.status(new_leader)?, killed_id), Some(false));
    let table = set.sealed_sessions(survivor, 1)?;
    assert_eq!(table[0]["replicas"].as_array().map(Vec::len), Some(2));
    // Restart the old leader: it rejoins as a follower and catches up.
    set.members[leader].node = None;
    set.start_member(leader)?;
    set.wait_leader(&[])?;
    // Once the leader has heard from it again (its own /healthz can be 200 a moment
    // earlier), the next session's replica set has all three.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = set.status(new_leader)?;
        if set
            .members
            .iter()
            .all(|m| member_up(&status, m.id) == Some(true))
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the leader never counted every member up: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _) = set.upload(new_leader)?;
    assert_eq!(code, 200);
    let table = set.sealed_sessions(new_leader, 2)?;
    let replica_counts: Vec<_> = table
        .iter()
        .map(|s| s["replicas"].as_array().map(Vec::len))
        .collect();
    assert!(replica_counts.contains(&Some(3)), "{table:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rejoined = set.status(leader)?;
        let reference = set.status(new_leader)?;
        if rejoined["applied"] == reference["applied"]
            && rejoined["term"].as_u64() > Some(term_before)
        {
            // What it applied is in its log: the log reaches at least that far.
            assert!(
                rejoined["last_log"].as_u64() >= rejoined["applied"].as_u64(),
                "{rejoined}"
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("old leader did not catch up: {rejoined} vs {reference}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(set.sealed_sessions(leader, 2)?.len(), 2);
    Ok(())
}

/// The `up` a leader's status gives member `id` (None: absent, or not the leader's status).
fn member_up(status: &Value, id: u64) -> Option<bool> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id)?["up"]
        .as_bool()
}

#[test]
fn restarting_the_whole_set_keeps_membership_and_sessions() -> Result<()> {
    let mut set = Set::start(3, "")?;
    for i in 0..3 {
        assert_eq!(set.upload(i)?.0, 200);
    }
    let before = set.sealed_sessions(0, 3)?;
    for m in &mut set.members {
        if let Some(node) = m.node.as_mut() {
            node.signal(libc::SIGTERM);
            let _ = node.child.wait();
        }
        m.node = None;
    }
    for i in 0..3 {
        set.start_member(i)?;
    }
    set.wait_leader(&[])?;
    assert_eq!(set.sealed_sessions(2, 3)?, before);
    assert_eq!(set.status(1)?["members"].as_array().map(Vec::len), Some(3));
    Ok(())
}

#[test]
fn a_rolling_restart_keeps_the_set_available() -> Result<()> {
    let mut set = Set::start(3, "")?;
    for i in 0..3 {
        if let Some(node) = set.members[i].node.as_mut() {
            node.signal(libc::SIGTERM);
            let status = node.child.wait()?;
            assert!(status.success(), "node {i} exited with {status}");
        }
        set.members[i].node = None;
        // While one node is down the other two keep taking sessions.
        let other = (i + 1) % 3;
        set.wait_leader(&[i])?;
        let (code, body) = set.upload(other)?;
        assert_eq!(code, 200, "node {other} while {i} restarts: {body}");
        set.start_member(i)?;
        set.wait_leader(&[])?;
    }
    assert_eq!(set.sealed_sessions(0, 3)?.len(), 3);
    Ok(())
}

#[test]
fn a_node_with_another_cas_certificate_is_refused() -> Result<()> {
    let set = Set::start(3, "")?;
    // An impostor: a valid certificate for node 3, but from its own CA.
    let evil = set.root.join("evil");
    run(&["certs", "init", "--out", path(&evil.join("ca"))?])?;
    run(&[
        "certs",
        "issue",
        "--ca",
        path(&evil.join("ca"))?,
        "--node-id",
        "3",
        "--san",
        "127.0.0.1",
        "--out",
        path(&evil.join("n"))?,
    ])?;
    let impostor = Member {
        id: 3,
        ingest: format!("127.0.0.1:{}", free_port()?),
        cluster: format!("127.0.0.1:{}", free_port()?),
        dir: evil.join("node"),
        config: evil.join("node.toml"),
        node: None,
    };
    let initial: Vec<String> = set
        .members
        .iter()
        .map(|m| {
            format!(
                "{{ id = {}, cluster_addr = \"{}\", ingest_addr = \"{}\" }}",
                m.id, m.cluster, m.ingest
            )
        })
        .collect();
    let text = format!(
        "statedir = \"{}/state\"\n[cluster]\nnode_id = 3\nlisten = \"{}\"\nca = \"{}/ca/ca.pem\"\ncert = \"{}/n/node.pem\"\nkey = \"{}/n/node.key\"\ninitial_members = [{}]\n",
        path(&impostor.dir)?, impostor.cluster, path(&evil)?, path(&evil)?, path(&evil)?, initial.join(", ")
    );
    std::fs::write(&impostor.config, text)?;
    let args = vec!["--config".to_string(), path(&impostor.config)?.to_string()];
    let node = Node::start_in(impostor.dir.clone(), args, &impostor.ingest)?;
    // It campaigns (it has no leader): every RPC it sends must be refused by TLS.
    std::thread::sleep(Duration::from_millis(3 * ELECTION_MAX_MS));
    let health = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/healthz", impostor.ingest),
    ])?;
    assert_eq!(
        String::from_utf8(health.stdout)?,
        "503",
        "impostor must not find a leader"
    );
    let mut rejected = 0.0;
    for m in &set.members {
        let metrics =
            String::from_utf8(curl(&["-s", &format!("http://{}/metrics", m.ingest)])?.stdout)?;
        rejected += metrics
            .lines()
            .filter(|l| l.starts_with("quorumcast_cluster_rejected_connections_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(rejected >= 1.0, "no node counted a rejected connection");
    // The real set is unaffected.
    set.wait_leader(&[])?;
    assert_eq!(set.status(0)?["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(set.upload(0)?.0, 200);
    drop(node);
    Ok(())
}

#[test]
fn a_partitioned_minority_refuses_fast_while_the_majority_accepts() -> Result<()> {
    let set = Set::start(3, "")?;
    let leader = set.wait_leader(&[])?;
    // Isolate the leader: the hardest case (it believes it leads until it notices).
    let partition = Partition::isolate(&set.members[leader].cluster)?;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    set.wait_leader_other_than(&[leader], Some(leader))?;
    // Until the isolated node notices, a claim may time out; after that, refusals are
    // immediate. Wait for the first refusal, then measure the next one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = set.upload(leader)?;
        if code == 503 {
            break;
        }
        if Instant::now() > deadline {
            bail!("isolated node still accepts sessions: {code} {body}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Instant::now();
    let (code, body) = set.upload(leader)?;
    let took = started.elapsed();
    assert_eq!(
        code,
        503,
        "{body}\n{}",
        set.members[leader]
            .node
            .as_ref()
            .map(|n| n.log_text())
            .unwrap_or_default()
    );
    assert!(body.contains("quorum"), "refusal reason: {body}");
    println!("isolated node refused in {took:?} (curl, including connection set-up)");
    assert!(took < Duration::from_millis(500), "refusal took {took:?}");
    for i in &others {
        assert_eq!(set.upload(*i)?.0, 200, "majority node {i} must accept");
    }
    let metrics = String::from_utf8(
        curl(&[
            "-s",
            &format!("http://{}/metrics", set.members[leader].ingest),
        ])?
        .stdout,
    )?;
    assert!(
        metrics.contains("quorumcast_refusals_total{reason=\"no_quorum\"}"),
        "refusal not counted"
    );
    drop(partition);
    set.wait_leader(&[])?;
    assert_eq!(set.upload(leader)?.0, 200, "healed node accepts again");
    Ok(())
}

fn wait_disk_state(set: &Set, node_id: u64, want: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = set.status(0)?;
        let state = status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["id"] == node_id)
            .map(|m| m["disk"]["state"].clone());
        if state == Some(Value::from(want)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {node_id} never reached disk state {want}: {state:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_nearly_full_disk_puts_a_node_under_pressure_until_space_returns() -> Result<()> {
    let tmp = tempdir();
    let dst3 = tmp.path().join("dst3");
    let fs = Tmpfs::mount(&dst3, "20m")?;
    let mut set = Set::start(3, "disk_check_ms = 100")?;
    // Re-point node 3's dst at the small file system.
    set.restart_on_dst(2, &fs.dir)?;
    set.use_small_disk_thresholds()?;
    wait_disk_state(&set, 3, "ok")?;
    // Fill to 90% with a real file.
    let filler = fs.dir.join("filler");
    std::fs::write(&filler, vec![7u8; 18 * 1024 * 1024])?;
    wait_disk_state(&set, 3, "pressure")?;
    let started = Instant::now();
    let (code, body) = set.upload(2)?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("pressure"), "{body}");
    assert!(started.elapsed() < Duration::from_millis(500));
    // A node under pressure is never put in a new replica set.
    assert_eq!(set.upload(0)?.0, 200);
    let newest = &set.sealed_sessions(0, 1)?[0];
    let replicas: Vec<u64> = newest["replicas"]
        .as_array()
        .context("replicas")?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(
        !replicas.contains(&3),
        "pressured node chosen as replica: {replicas:?}"
    );
    // Space returns: the pressure clears.
    std::fs::remove_file(&filler)?;
    wait_disk_state(&set, 3, "ok")?;
    assert_eq!(set.upload(2)?.0, 200);
    let metrics = String::from_utf8(
        curl(&["-s", &format!("http://{}/metrics", set.members[2].ingest)])?.stdout,
    )?;
    assert!(
        metrics.contains("quorumcast_refusals_total{reason=\"disk_pressure\"} 1"),
        "{metrics}"
    );
    set.members[2].node = None;
    drop(fs);
    Ok(())
}

#[test]
fn a_learner_is_added_promoted_and_removed() -> Result<()> {
    let mut set = Set::start(3, "")?;
    // Node 4: same CA, no initial members (it joins when added).
    let id = 4;
    let m = Member {
        id,
        ingest: format!("127.0.0.1:{}", free_port()?),
        cluster: format!("127.0.0.1:{}", free_port()?),
        dir: set.root.join("node4"),
        config: set.root.join("node4.toml"),
        node: None,
    };
    write_config(&set.root, &m, "", "")?;
    set.members.push(m);
    set.start_member(3)?;
    let via = &set.members[1].ingest;
    let (cluster, ingest) = (
        set.members[3].cluster.clone(),
        set.members[3].ingest.clone(),
    );
    run(&[
        "cluster",
        "add-learner",
        "--node",
        via,
        "--id",
        "4",
        "--cluster-addr",
        &cluster,
        "--ingest-addr",
        &ingest,
    ])?;
    let role_of_4 = |status: &Value| {
        status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["id"] == 4)
            .and_then(|m| m["role"].as_str().map(str::to_string))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = set.status(1)?;
        if role_of_4(&status).as_deref() == Some("learner") {
            break;
        }
        if Instant::now() > deadline {
            bail!("node 4 never listed as a learner: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    run(&["cluster", "promote", "--node", via, "--id", "4"])?;
    let status = set.status(0)?;
    let roles: Vec<(u64, String)> = status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["id"].as_u64().unwrap_or(0),
                m["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        roles.iter().filter(|(_, r)| r == "voter").count(),
        4,
        "{roles:?}"
    );
    set.wait_leader(&[])?;
    run(&["cluster", "remove", "--node", via, "--id", "4"])?;
    let status = set.status(0)?;
    let ids: Vec<u64> = status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(set.upload(0)?.0, 200);
    Ok(())
}

#[test]
fn a_node_that_missed_compacted_log_catches_up_from_a_snapshot() -> Result<()> {
    let mut set = Set::start(3, "snapshot_logs = 10")?;
    let leader = set.wait_leader(&[])?;
    let down = (leader + 1) % 3;
    let up = (leader + 2) % 3;
    let before = set.status(down)?["applied"].as_u64().unwrap_or(0);
    set.members[down].node.as_mut().context("node")?.kill9();
    set.members[down].node = None;
    for _ in 0..15 {
        assert_eq!(set.upload(up)?.0, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while set.status(leader)?["purged"].as_u64().unwrap_or(0) <= before {
        if Instant::now() > deadline {
            bail!("leader never compacted its log: {}", set.status(leader)?);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    set.start_member(down)?;
    set.wait_leader(&[])?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let caught = set.status(down)?;
        if caught["applied"] == set.status(leader)?["applied"] {
            assert!(
                caught["snapshot"].as_u64().unwrap_or(0) > before,
                "no snapshot installed: {caught}"
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("restarted node did not catch up: {caught}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(set.sealed_sessions(down, 15)?.len(), 15);
    Ok(())
}

#[test]
fn ended_sessions_leave_the_raft_table_after_the_retention_while_live_ones_stay() -> Result<()> {
    // A 4 s retention, so the leader's clean-up pass runs every 4 s.
    let set = Set::start(3, "forget_ended_after_secs = 4")?;
    let node = set.members[0].node.as_ref().context("node")?;
    let mut live = H2Upload::v2(node)?;
    let header = b"{\"version\": 2, \"width\": 80, \"height\": 24}\n";
    live.send(header)?;
    live.wait_ack(header.len() as u64)?;
    assert_eq!(set.upload(1)?.0, 200);
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut saw_both = false;
    loop {
        let tables = (0..3)
            .map(|i| set.cluster_sessions(i))
            .collect::<Result<Vec<_>>>()?;
        saw_both |= tables[0].len() == 2;
        let only_live = tables
            .iter()
            .all(|t| t.len() == 1 && t[0]["state"] == "live");
        if saw_both && only_live {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the ended session was not forgotten everywhere (saw both: {saw_both}): {tables:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Only the Raft table forgets: the recording and its index record stay on every node.
    for member in &set.members {
        let node = member.node.as_ref().context("node")?;
        let complete = node.wait_sessions("complete", 1)?;
        assert!(
            !node.read_recording(&complete[0])?.is_empty(),
            "recording bytes gone"
        );
    }
    live.finish()?;
    Ok(())
}
