//! The fault schedules. Each scenario is a short function run on its own thread while the
//! clients record; its timing and its choices come from the scenario's seeded RNG, its targets
//! from the live set (the owner of the most live sessions, the Raft leader), ties broken by the
//! RNG. Every fault is logged with its time and marked on the timeline.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::disk;
use crate::net::{self, Partition};
use crate::set::{Cluster, ELECTION_MAX_MS};
use crate::timeline::Timeline;
use crate::util::{log, Rng};

/// A scenario: its name, the set size, and its schedule.
#[derive(Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub nodes: usize,
    /// Whether a node's dst lives on a small tmpfs (disk scenario).
    pub small_disk: bool,
    pub run: fn(&mut Ctx),
    pub about: &'static str,
}

pub const ALL: &[Scenario] = &[
    Scenario { name: "owner-kill", nodes: 3, small_disk: false, run: owner_kill, about: "kill -9 the owner of the most live sessions, restart it ~10 s later" },
    Scenario { name: "leader-kill", nodes: 3, small_disk: false, run: leader_kill, about: "kill -9 the Raft leader, restart it ~10 s later" },
    Scenario { name: "sigstop", nodes: 3, small_disk: false, run: sigstop, about: "SIGSTOP a busy owner (or the leader) for 3-4 election timeouts, then SIGCONT" },
    Scenario { name: "partition", nodes: 3, small_disk: false, run: partition_cluster, about: "drop a node's UDP (Raft + replication) for ~10 s; its clients still reach it" },
    Scenario { name: "ingest-cut", nodes: 3, small_disk: false, run: partition_ingest, about: "drop TCP to a busy owner's ingest port for ~10 s; its peers still reach it" },
    Scenario { name: "netem", nodes: 3, small_disk: false, run: netem, about: "delay/jitter, loss and reordering on two nodes' links (tc netem), one after the other" },
    Scenario { name: "disk-full", nodes: 3, small_disk: true, run: disk_full, about: "one node's dst on a 64 MiB tmpfs filled to 97% for ~10 s, then freed" },
    Scenario { name: "kill-two-of-five", nodes: 5, small_disk: false, run: kill_two_of_five, about: "5 nodes: kill -9 the busiest owner and the leader at once, restart both ~12 s later" },
    Scenario { name: "rolling-restart", nodes: 3, small_disk: false, run: rolling_restart, about: "SIGTERM, restart and wait healthy, each node in turn" },
    Scenario { name: "whole-set-restart", nodes: 3, small_disk: false, run: whole_restart, about: "stop every node at once (kill -9 or SIGTERM, seeded), restart all 3 s later" },
    Scenario { name: "mixed", nodes: 5, small_disk: false, run: mixed, about: "5 nodes, overlapping: netem on one node, kill -9 the busiest owner, then SIGSTOP the leader" },
];

pub const QUICK: &[&str] = &[
    "owner-kill",
    "leader-kill",
    "sigstop",
    "partition",
    // The slow / lossy replica case; CI has no other test of it.
    "netem",
    "rolling-restart",
];

pub fn find(name: &str) -> Option<Scenario> {
    ALL.iter().copied().find(|s| s.name == name)
}

/// What a schedule works with.
pub struct Ctx<'a> {
    pub cluster: &'a Mutex<Cluster>,
    pub timeline: &'a Mutex<Timeline>,
    pub rng: Rng,
    pub t0: Instant,
    pub faults: usize,
    /// Timestamped lines: what was done to whom.
    pub log: Vec<String>,
    /// Unexpected outcomes of fault handling (a node that would not stop, or not come back).
    pub problems: Vec<String>,
    pub disk_node: Option<u64>,
}

impl Ctx<'_> {
    pub fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn note(&mut self, what: String) {
        let line = format!(
            "{:6.1}s ({}) {what}",
            self.now_ms() as f64 / 1000.0,
            chrono::Utc::now().format("%H:%M:%S%.3fZ")
        );
        log(&format!("fault: {line}"));
        self.log.push(line);
    }

    /// Sleeps until `base_ms + jitter` (jitter drawn from the RNG) after the clients started.
    fn at(&mut self, base_ms: u64, jitter_ms: u64) {
        let target = base_ms + self.rng.range(0, jitter_ms);
        let now = self.now_ms();
        if target > now {
            std::thread::sleep(Duration::from_millis(target - now));
        }
    }

    fn pause(&mut self, lo_ms: u64, hi_ms: u64) {
        std::thread::sleep(Duration::from_millis(self.rng.range(lo_ms, hi_ms)));
    }

    fn n(&self) -> u64 {
        self.cluster
            .lock()
            .map(|c| c.nodes.len() as u64)
            .unwrap_or(3)
    }

    fn random_node(&mut self, exclude: &[u64]) -> u64 {
        let candidates: Vec<u64> = (1..=self.n()).filter(|n| !exclude.contains(n)).collect();
        *self.rng.pick(&candidates)
    }

    /// The owner of the most live sessions (RNG among ties; random if the table is unreadable).
    fn busiest_owner(&mut self, exclude: &[u64]) -> u64 {
        let table = self
            .cluster
            .lock()
            .ok()
            .and_then(|c| c.cluster_sessions(None).ok());
        let mut count: BTreeMap<u64, usize> = BTreeMap::new();
        for s in table.unwrap_or_default() {
            if let (Some(owner), Some("live")) = (s["owner"].as_u64(), s["state"].as_str()) {
                if !exclude.contains(&owner) {
                    *count.entry(owner).or_default() += 1;
                }
            }
        }
        let max = count.values().copied().max().unwrap_or(0);
        let top: Vec<u64> = count
            .iter()
            .filter(|(_, c)| **c == max)
            .map(|(n, _)| *n)
            .collect();
        if top.is_empty() {
            return self.random_node(exclude);
        }
        *self.rng.pick(&top)
    }

    fn leader(&mut self, exclude: &[u64]) -> u64 {
        let leader = self.cluster.lock().ok().and_then(|c| c.any_leader());
        match leader {
            Some(l) if !exclude.contains(&l) => l,
            _ => self.random_node(exclude),
        }
    }

    fn down(&mut self, node: u64, cause: &'static str) {
        let t = self.now_ms();
        if let Ok(mut tl) = self.timeline.lock() {
            tl.down(node, t, cause);
        }
        self.faults += 1;
        self.note(format!("node {node}: {cause}"));
    }

    fn up(&mut self, node: u64, cause: &'static str, what: &str) {
        let t = self.now_ms();
        if let Ok(mut tl) = self.timeline.lock() {
            tl.up(node, t, Some(cause));
        }
        self.note(format!("node {node}: {what}"));
    }

    pub fn kill(&mut self, node: u64) {
        if let Ok(mut c) = self.cluster.lock() {
            c.kill9(node);
        }
        self.down(node, "kill -9");
    }

    pub fn restart(&mut self, node: u64, cause: &'static str) {
        let started = self.cluster.lock().map(|mut c| c.spawn(node));
        match started {
            Ok(Ok(())) => self.up(node, cause, "restarted"),
            Ok(Err(e)) => self
                .problems
                .push(format!("node {node} did not restart: {e:#}")),
            Err(_) => self.problems.push("cluster lock poisoned".into()),
        }
    }

    fn sigstop(&mut self, node: u64) {
        if let Ok(mut c) = self.cluster.lock() {
            c.signal(node, libc::SIGSTOP);
        }
        self.down(node, "SIGSTOP");
    }

    fn sigcont(&mut self, node: u64) {
        if let Ok(mut c) = self.cluster.lock() {
            c.signal(node, libc::SIGCONT);
        }
        self.up(node, "SIGSTOP", "SIGCONT");
    }

    fn partition(&mut self, node: u64, kind: Partition) {
        let cause = partition_cause(kind);
        if let Err(e) = net::set_partition(node, kind, true) {
            self.problems.push(format!("partition node {node}: {e:#}"));
        }
        self.down(node, cause);
    }

    fn heal(&mut self, node: u64, kind: Partition) {
        let _ = net::set_partition(node, kind, false);
        self.up(node, partition_cause(kind), "healed");
    }

    fn netem(&mut self, node: u64, imp: &net::Impairment) {
        match net::impair(node, imp) {
            Ok(applied) => {
                self.down(node, "degraded link");
                self.note(format!("node {node}: {applied}"));
            }
            Err(e) => self
                .problems
                .push(format!("degrading node {node}'s link: {e:#}")),
        }
    }

    fn clear_netem(&mut self, node: u64) {
        net::unimpair(node);
        self.up(node, "degraded link", "link restored");
    }

    fn wait_healthy(&mut self, limit: Duration) {
        let healthy = self
            .cluster
            .lock()
            .map(|c| c.wait_healthy(limit).map(|_| ()));
        if let Ok(Err(e)) = healthy {
            self.problems.push(format!(
                "set not healthy at {:.1}s: {e:#}",
                self.now_ms() as f64 / 1000.0
            ));
        }
    }

    /// Undoes every fault still in force: SIGCONT, heal partitions, remove netem, free the
    /// disk, restart every node that is down. Called after each schedule.
    pub fn heal_everything(&mut self) {
        let n = self.n();
        for node in 1..=n {
            let (running, stopped) = self
                .cluster
                .lock()
                .map(|c| (c.node(node).running(), c.node(node).stopped))
                .unwrap_or((true, false));
            if stopped {
                self.sigcont(node);
            }
            if !running {
                self.restart(node, "kill -9");
            }
        }
        if let Ok(c) = self.cluster.lock() {
            for node in &c.nodes {
                disk::free(&node.dst());
            }
        }
        for node in 1..=n {
            let _ = net::set_partition(node, Partition::Cluster, false);
            let _ = net::set_partition(node, Partition::Ingest, false);
            net::unimpair(node);
        }
        let t = self.now_ms();
        if let Ok(mut tl) = self.timeline.lock() {
            for node in 1..=n {
                tl.up(node, t, None);
            }
        }
    }
}

fn partition_cause(kind: Partition) -> &'static str {
    match kind {
        Partition::Cluster => "cluster partition (UDP dropped)",
        Partition::Ingest => "ingest cut (TCP dropped)",
    }
}

/// When the first fault may start: sessions are live and have bytes by then.
const FIRST_FAULT_MS: u64 = 6_000;

fn owner_kill(c: &mut Ctx) {
    c.at(FIRST_FAULT_MS, 3_000);
    let v = c.busiest_owner(&[]);
    c.kill(v);
    c.pause(8_000, 12_000);
    c.restart(v, "kill -9");
}

fn leader_kill(c: &mut Ctx) {
    c.at(FIRST_FAULT_MS, 3_000);
    let v = c.leader(&[]);
    c.kill(v);
    c.pause(8_000, 12_000);
    c.restart(v, "kill -9");
}

fn sigstop(c: &mut Ctx) {
    c.at(FIRST_FAULT_MS, 3_000);
    let v = if c.rng.chance(50) {
        c.leader(&[])
    } else {
        c.busiest_owner(&[])
    };
    c.sigstop(v);
    c.pause(3 * ELECTION_MAX_MS, 4 * ELECTION_MAX_MS);
    c.sigcont(v);
}

fn partition_cluster(c: &mut Ctx) {
    c.at(FIRST_FAULT_MS, 3_000);
    let v = if c.rng.chance(50) {
        c.leader(&[])
    } else {
        c.busiest_owner(&[])
    };
    c.partition(v, Partition::Cluster);
    c.pause(8_000, 12_000);
    c.heal(v, Partition::Cluster);
}

fn partition_ingest(c: &mut Ctx) {
    c.at(FIRST_FAULT_MS, 3_000);
    let v = c.busiest_owner(&[]);
    c.partition(v, Partition::Ingest);
    c.pause(8_000, 12_000);
    c.heal(v, Partition::Ingest);
}

const NETEM_SPECS: &[net::Impairment] = &[
    net::Impairment {
        netem: "delay 80ms 40ms loss 5% reorder 25% 50%",
        loss_percent: 5,
        rate: "8mbit",
        reorder_percent: 25,
        slow_rate: "2mbit",
    },
    net::Impairment {
        netem: "delay 30ms 20ms loss 10%",
        loss_percent: 10,
        rate: "20mbit",
        reorder_percent: 0,
        slow_rate: "",
    },
    net::Impairment {
        netem: "delay 150ms 100ms reorder 30% 50%",
        loss_percent: 2,
        rate: "2mbit",
        reorder_percent: 30,
        slow_rate: "512kbit",
    },
];

fn netem(c: &mut Ctx) {
    c.at(FIRST_FAULT_MS, 2_000);
    let a = c.busiest_owner(&[]);
    let spec = *c.rng.pick(NETEM_SPECS);
    c.netem(a, &spec);
    c.pause(10_000, 14_000);
    c.clear_netem(a);
    let b = c.random_node(&[a]);
    let spec = *c.rng.pick(NETEM_SPECS);
    c.netem(b, &spec);
    c.pause(8_000, 10_000);
    c.clear_netem(b);
}

fn disk_full(c: &mut Ctx) {
    let Some(v) = c.disk_node else {
        c.problems.push("disk scenario without a small disk".into());
        return;
    };
    c.at(FIRST_FAULT_MS, 3_000);
    let dst = c.cluster.lock().map(|cl| cl.node(v).dst());
    if let Ok(dst) = dst {
        if let Err(e) = disk::fill(&dst) {
            c.problems.push(format!("filling node {v}'s disk: {e:#}"));
        }
        c.down(v, "disk full");
        c.pause(8_000, 12_000);
        disk::free(&dst);
        c.up(v, "disk full", "disk freed");
    }
}

fn kill_two_of_five(c: &mut Ctx) {
    c.at(FIRST_FAULT_MS, 3_000);
    let a = c.busiest_owner(&[]);
    let b = c.leader(&[a]);
    c.kill(a);
    c.kill(b);
    c.pause(10_000, 14_000);
    c.restart(a, "kill -9");
    c.restart(b, "kill -9");
}

fn rolling_restart(c: &mut Ctx) {
    c.at(FIRST_FAULT_MS, 2_000);
    let mut order: Vec<u64> = (1..=c.n()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, c.rng.range(0, i as u64) as usize);
    }
    for v in order {
        c.down(v, "SIGTERM (rolling)");
        let problem = c
            .cluster
            .lock()
            .ok()
            .and_then(|mut cl| cl.terminate(v, Duration::from_secs(15)));
        if let Some(p) = problem {
            c.problems.push(p);
        }
        c.pause(500, 1_500);
        c.restart(v, "SIGTERM (rolling)");
        c.wait_healthy(Duration::from_secs(30));
        c.pause(1_000, 3_000);
    }
}

fn whole_restart(c: &mut Ctx) {
    c.at(FIRST_FAULT_MS + 2_000, 3_000);
    let nodes: Vec<u64> = (1..=c.n()).collect();
    let hard = c.rng.chance(50);
    let cause = if hard {
        "kill -9"
    } else {
        "SIGTERM (whole set)"
    };
    for v in &nodes {
        c.down(*v, cause);
    }
    let problems = c.cluster.lock().map(|mut cl| {
        if hard {
            nodes.iter().for_each(|v| cl.kill9(*v));
            Vec::new()
        } else {
            cl.terminate_all(&nodes, Duration::from_secs(15))
        }
    });
    c.problems.extend(problems.unwrap_or_default());
    c.note(format!("whole set stopped ({cause})"));
    c.pause(2_000, 4_000);
    for v in &nodes {
        c.restart(*v, cause);
    }
    c.wait_healthy(Duration::from_secs(40));
}

fn mixed(c: &mut Ctx) {
    c.at(FIRST_FAULT_MS, 2_000);
    let slow = c.random_node(&[]);
    let spec = *c.rng.pick(NETEM_SPECS);
    c.netem(slow, &spec);
    c.pause(1_000, 3_000);
    let victim = c.busiest_owner(&[slow]);
    c.kill(victim);
    c.pause(6_000, 9_000);
    c.restart(victim, "kill -9");
    c.pause(1_000, 2_000);
    let frozen = c.leader(&[slow, victim]);
    c.sigstop(frozen);
    c.pause(3 * ELECTION_MAX_MS, 4 * ELECTION_MAX_MS);
    c.sigcont(frozen);
    c.clear_netem(slow);
}
