//! Separate hosts: one network namespace per node, joined by veth pairs to a bridge in the root
//! namespace (10.77.0.1), node N at 10.77.0.1N. Clients run in the root namespace and reach the
//! nodes through the bridge. Network faults are applied inside a node's namespace (iptables)
//! or on both ends of its veth (tc netem). Everything is named with the `qc` prefix so a
//! leftover from a crashed run can be found and removed.

use anyhow::Result;

use crate::util::{sh, sh_quiet};

pub const BRIDGE: &str = "qcbr0";
pub const BRIDGE_ADDR: &str = "10.77.0.1";
/// The root namespace's FORWARD policy may be DROP (Docker) and bridged frames go through
/// iptables when br_netfilter is loaded: this rule lets our bridge forward to itself.
const FORWARD_RULE: [&str; 7] = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"];
/// Ports inside every node's namespace.
pub const INGEST_PORT: u16 = 8080;
pub const CLUSTER_PORT: u16 = 7000;
/// Highest node count the address plan supports (10.77.0.11 .. 10.77.0.19).
pub const MAX_NODES: usize = 9;

pub fn ns_name(id: u64) -> String {
    format!("qc-n{id}")
}

fn veth_host(id: u64) -> String {
    format!("qcv{id}")
}

pub fn node_ip(id: u64) -> String {
    format!("10.77.0.1{id}")
}

/// The namespaces and the bridge; torn down on drop.
pub struct Net {
    nodes: Vec<u64>,
}

impl Net {
    pub fn setup(n: usize) -> Result<Net> {
        anyhow::ensure!(n <= MAX_NODES, "at most {MAX_NODES} nodes");
        cleanup_leftovers();
        let net = Net {
            nodes: (1..=n as u64).collect(),
        };
        sh("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        sh(
            "ip",
            &["addr", "add", &format!("{BRIDGE_ADDR}/24"), "dev", BRIDGE],
        )?;
        sh("ip", &["link", "set", BRIDGE, "up"])?;
        sh("iptables", &forward_rule("-I"))?;
        for id in &net.nodes {
            add_node(*id)?;
        }
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        cleanup_leftovers();
    }
}

fn forward_rule(op: &str) -> Vec<&str> {
    let mut args = vec![op];
    args.extend(FORWARD_RULE);
    args
}

fn add_node(id: u64) -> Result<()> {
    let ns = ns_name(id);
    let host = veth_host(id);
    let inner = format!("qci{id}");
    sh("ip", &["netns", "add", &ns])?;
    sh(
        "ip",
        &["link", "add", &host, "type", "veth", "peer", "name", &inner],
    )?;
    sh("ip", &["link", "set", &inner, "netns", &ns])?;
    sh("ip", &["link", "set", &host, "master", BRIDGE])?;
    sh("ip", &["link", "set", &host, "up"])?;
    let in_ns = |args: &[&str]| -> Result<String> {
        let mut all = vec!["netns", "exec", &ns];
        all.extend_from_slice(args);
        sh("ip", &all)
    };
    in_ns(&["ip", "link", "set", &inner, "name", "eth0"])?;
    in_ns(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", node_ip(id)),
        "dev",
        "eth0",
    ])?;
    in_ns(&["ip", "link", "set", "eth0", "up"])?;
    in_ns(&["ip", "link", "set", "lo", "up"])?;
    Ok(())
}

/// Removes whatever a previous (possibly crashed) run left: processes inside our namespaces,
/// the namespaces, veths, the bridge and the FORWARD rule. Idempotent.
pub fn cleanup_leftovers() {
    let listed = sh("ip", &["netns", "list"]).unwrap_or_default();
    for ns in listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("qc-n"))
    {
        kill_namespace_pids(ns);
        sh_quiet("ip", &["netns", "del", ns]);
    }
    let links = sh("ip", &["-o", "link", "show"]).unwrap_or_default();
    for link in links
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|l| l.trim().split('@').next().unwrap_or("").to_string())
        .filter(|l| l.starts_with("qcv") || l == BRIDGE)
    {
        sh_quiet("ip", &["link", "del", &link]);
    }
    // Remove every copy of our FORWARD rule (a crash between two runs may leave several).
    for _ in 0..10 {
        if sh("iptables", &forward_rule("-D")).is_err() {
            break;
        }
    }
}

/// SIGKILL to every process in namespace `ns` (ours by construction: only we create `qc-n*`).
fn kill_namespace_pids(ns: &str) {
    let pids = sh("ip", &["netns", "pids", ns]).unwrap_or_default();
    for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2) on a pid that lives in our own namespace.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// Drop the node's UDP (QUIC: Raft and replication) in both directions; clients still reach it.
    Cluster,
    /// Drop TCP to its ingest port: clients can't reach it; its peers still can.
    Ingest,
}

fn partition_rules(kind: Partition) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let port = INGEST_PORT.to_string();
    match kind {
        Partition::Cluster => vec![
            s(&["INPUT", "-p", "udp", "-i", "eth0", "-j", "DROP"]),
            s(&["OUTPUT", "-p", "udp", "-o", "eth0", "-j", "DROP"]),
        ],
        Partition::Ingest => vec![
            s(&["INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"]),
            s(&["OUTPUT", "-p", "tcp", "--sport", &port, "-j", "DROP"]),
        ],
    }
}

/// Inserts (`on`) or deletes the partition's rules inside node `id`'s namespace.
pub fn set_partition(id: u64, kind: Partition, on: bool) -> Result<()> {
    let ns = ns_name(id);
    for rule in partition_rules(kind) {
        let mut args = vec![
            "netns",
            "exec",
            &ns,
            "iptables",
            if on { "-I" } else { "-D" },
        ];
        args.extend(rule.iter().map(String::as_str));
        if on {
            sh("ip", &args)?;
        } else {
            // Delete every copy; stops at the first "no such rule".
            for _ in 0..5 {
                if sh("ip", &args).is_err() {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// A degraded link: netem's spec, and what stands in for it on a kernel without `sch_netem`
/// (random loss by iptables `statistic`, queueing delay by a rate limit, reordering by a
/// slow lane: a random share of the node's outgoing packets is classified into an `htb`
/// class with a small rate and a short queue, so packets sent after them overtake them).
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    pub netem: &'static str,
    pub loss_percent: u32,
    pub rate: &'static str,
    /// Share of the node's outgoing packets sent through the slow lane (0: none).
    pub reorder_percent: u32,
    /// The slow lane's rate; its queue holds at most [`SLOW_LANE_PACKETS`] packets.
    pub slow_rate: &'static str,
}

/// Queue bound of the slow lane: it bounds the extra delay (50 full packets at 512 kbit/s
/// is ~1.1 s) and drops beyond it, as a congested path would.
const SLOW_LANE_PACKETS: &str = "50";

/// Degrades both directions of node `id`'s link; says what was applied.
pub fn impair(id: u64, imp: &Impairment) -> anyhow::Result<String> {
    let ns = ns_name(id);
    let host = veth_host(id);
    let netem: Vec<&str> = imp.netem.split_whitespace().collect();
    let mut a = vec!["qdisc", "replace", "dev", &host, "root", "netem"];
    a.extend_from_slice(&netem);
    if sh("tc", &a).is_ok() {
        let mut b = vec![
            "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
        ];
        b.extend_from_slice(&netem);
        sh("ip", &b)?;
        return Ok(format!("netem {}", imp.netem));
    }
    // No netem in this kernel: the stand-in.
    let probability = format!("{:.3}", f64::from(imp.loss_percent) / 100.0);
    for rule in loss_rules(&probability) {
        let mut args = vec!["netns", "exec", &ns, "iptables", "-I"];
        args.extend(rule.iter().copied());
        sh("ip", &args)?;
    }
    let tbf = [
        "root", "tbf", "rate", imp.rate, "burst", "32kbit", "latency", "400ms",
    ];
    let mut a = vec!["qdisc", "replace", "dev", &host];
    a.extend_from_slice(&tbf);
    sh("tc", &a)?;
    if imp.reorder_percent == 0 {
        let mut b = vec![
            "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0",
        ];
        b.extend_from_slice(&tbf);
        sh("ip", &b)?;
        return Ok(format!(
            "no sch_netem in this kernel; instead {}% random loss each way (iptables statistic) and tbf rate {} (queueing delay)",
            imp.loss_percent, imp.rate
        ));
    }
    slow_lane(&ns, imp)?;
    Ok(format!(
        "no sch_netem in this kernel; instead {}% random loss each way (iptables statistic), rate {} each way (queueing delay), and {}% of the node's outgoing packets through a {} slow lane of {} packets (reordering)",
        imp.loss_percent, imp.rate, imp.reorder_percent, imp.slow_rate, SLOW_LANE_PACKETS
    ))
}

/// The node's egress as two `htb` lanes: the normal one at `rate`, and a slow one that a
/// random share of packets is classified into (iptables `CLASSIFY`), so later packets of
/// the same flow overtake them.
fn slow_lane(ns: &str, imp: &Impairment) -> anyhow::Result<()> {
    let tc = |args: &[&str]| {
        let mut all = vec!["netns", "exec", ns, "tc"];
        all.extend_from_slice(args);
        sh("ip", &all)
    };
    tc(&[
        "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "htb", "default", "10",
    ])?;
    tc(&[
        "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:10", "htb", "rate", imp.rate,
    ])?;
    tc(&[
        "class",
        "add",
        "dev",
        "eth0",
        "parent",
        "1:",
        "classid",
        "1:20",
        "htb",
        "rate",
        imp.slow_rate,
    ])?;
    tc(&[
        "qdisc",
        "add",
        "dev",
        "eth0",
        "parent",
        "1:20",
        "pfifo",
        "limit",
        SLOW_LANE_PACKETS,
    ])?;
    let probability = format!("{:.3}", f64::from(imp.reorder_percent) / 100.0);
    sh(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "iptables",
            "-t",
            "mangle",
            "-A",
            "POSTROUTING",
            "-o",
            "eth0",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &probability,
            "-j",
            "CLASSIFY",
            "--set-class",
            "1:20",
        ],
    )?;
    Ok(())
}

fn loss_rules(probability: &str) -> Vec<Vec<&str>> {
    vec![
        vec![
            "INPUT",
            "-i",
            "eth0",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            probability,
            "-j",
            "DROP",
        ],
        vec![
            "OUTPUT",
            "-o",
            "eth0",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            probability,
            "-j",
            "DROP",
        ],
    ]
}

/// Removes whatever [`impair`] applied (either kind); idempotent.
pub fn unimpair(id: u64) {
    let ns = ns_name(id);
    let host = veth_host(id);
    sh_quiet("tc", &["qdisc", "del", "dev", &host, "root"]);
    sh_quiet(
        "ip",
        &[
            "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
        ],
    );
    // The stand-in's loss and slow-lane rules, whatever their probability: remove the
    // statistic matches of both tables.
    for table in ["filter", "mangle"] {
        let rules =
            sh("ip", &["netns", "exec", &ns, "iptables", "-t", table, "-S"]).unwrap_or_default();
        for line in rules.lines().filter(|l| l.contains("statistic")) {
            let mut args = vec!["netns", "exec", &ns, "iptables", "-t", table, "-D"];
            let rule: Vec<&str> = line.split_whitespace().skip(1).collect();
            args.extend(rule);
            sh_quiet("ip", &args);
        }
    }
}
