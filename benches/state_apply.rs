//! The control plane's state machine alone, one thread, no I/O: what applying a session's
//! claim and end costs as the set's history grows. Every node applies every claim, so this
//! cost is paid three times per admitted session on a 3-node set.
//!
//! Run with `cargo bench --bench state_apply` (`-- --quick` for a shorter run). For each
//! history size H, a state first holds H ended sessions; then K new sessions are claimed
//! and ended (2K commands, one at a time, as committed entries are applied). Printed:
//! claims+ends per second (best of the rounds), and the ratio to the empty history, the
//! baseline measured in the same run: a flat ratio means the cost does not grow with history.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use quorumcast::cluster::state::ClusterState;
use quorumcast::cluster::types::{ClusterSessionState, Command, CommandResponse};

const MEMBERS: [u64; 3] = [1, 2, 3];

fn claim(i: usize) -> Command {
    Command::ClaimSession {
        id: format!("session-{i:09}"),
        owner: (i % 3) as u64 + 1,
        node_dir: format!("100.64.{}.{}", (i / 250) % 250, i % 250),
        file_name: format!("2026-12-04T21:{:02}:{:02}Z-{i}.cast", (i / 60) % 60, i % 60),
        started_at_ms: i as i64,
        up: MEMBERS.to_vec(),
    }
}

fn end(i: usize) -> Command {
    Command::EndSession {
        id: format!("session-{i:09}"),
        state: ClusterSessionState::Sealed,
        epoch: 1,
    }
}

fn apply_ok(state: &mut ClusterState, cmd: &Command, members: &BTreeSet<u64>) {
    let answer = state.apply(cmd, members);
    assert!(
        !matches!(answer, CommandResponse::Rejected { .. }),
        "{cmd:?} rejected: {answer:?}"
    );
}

/// A state holding `history` ended sessions.
fn with_history(history: usize, members: &BTreeSet<u64>) -> ClusterState {
    let mut state = ClusterState::default();
    for i in 0..history {
        apply_ok(&mut state, &claim(i), members);
        apply_ok(&mut state, &end(i), members);
    }
    state
}

/// Claims and ends `count` new sessions, 16 live at a time; returns the elapsed time.
fn run(base: &ClusterState, first: usize, count: usize, members: &BTreeSet<u64>) -> Duration {
    let mut state = base.clone();
    let started = Instant::now();
    for i in first..first + count {
        apply_ok(&mut state, &claim(i), members);
        if i >= first + 16 {
            apply_ok(&mut state, &end(i - 16), members);
        }
    }
    black_box(&state);
    started.elapsed()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (histories, count, rounds): (&[usize], usize, usize) = if quick {
        (&[0, 10_000, 50_000], 2_000, 3)
    } else {
        (&[0, 10_000, 100_000, 300_000], 5_000, 5)
    };
    let members: BTreeSet<u64> = MEMBERS.into_iter().collect();
    println!("quorumcast state machine: claim + end as the history of ended sessions grows");
    println!("  {count} new sessions claimed (16 live at a time) and ended per round, best of {rounds} rounds");
    println!();
    println!("  history (ended sessions)   claims/s   vs empty history");
    let mut baseline = None;
    for &history in histories {
        let base = with_history(history, &members);
        let best = (0..rounds)
            .map(|_| run(&base, history, count, &members))
            .min()
            .unwrap_or_default();
        let rate = count as f64 / best.as_secs_f64().max(f64::EPSILON);
        let base_rate = *baseline.get_or_insert(rate);
        println!("  {history:>24}   {rate:>8.0}   {:>6.2}x", rate / base_rate);
    }
}
