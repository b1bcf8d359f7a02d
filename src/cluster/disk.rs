//! The disk monitor: measures this node's dst file system and reports its state through Raft.
//!
//! Owns sampling (statvfs), classification with hysteresis (via [`super::state::classify`]
//! and the cluster-wide thresholds in [`super::types::Settings`]) and the report schedule:
//! a report when the state changes, else one at a slow pace, so the log sees a few entries
//! an hour per node, not one per sample. The local state is also kept in memory so that
//! admission refuses in microseconds without waiting for Raft.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::member::Member;
use super::state::classify;
use super::types::{Command, DiskReport, DiskState};
use crate::metrics as m;

/// A report even without a change, so `cluster status` shows fresh numbers.
const SLOW_REPORT_PACE: Duration = Duration::from_secs(60);

/// Free and total bytes of the file system holding `path`, as an unprivileged writer sees it.
pub fn sample(path: &Path) -> std::io::Result<(u64, u64)> {
    let stats = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let fragment = stats.fragment_size() as u64;
    let free = (stats.blocks_available() as u64).saturating_mul(fragment);
    let total = (stats.blocks() as u64).saturating_mul(fragment);
    Ok((free, total))
}

pub fn from_u8(value: u8) -> DiskState {
    match value {
        0 => DiskState::Ok,
        1 => DiskState::Pressure,
        _ => DiskState::Full,
    }
}

/// Runs until `shutdown`: sample, classify, report on change or at the slow pace.
pub async fn monitor(member: Arc<Member>, dst: std::path::PathBuf, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(member.config.disk_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: Option<(DiskState, Instant)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let dir = dst.clone();
        let (free, total) = match tokio::task::spawn_blocking(move || sample(&dir)).await {
            Ok(Ok(sampled)) => sampled,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot measure the dst file system; treating it as full");
                (0, 0)
            }
            Err(e) => {
                tracing::warn!(error = %e, "disk sampling task failed");
                continue;
            }
        };
        let settings = member.state.read(|s| s.settings.clone());
        let state = classify(&settings, member.local_disk(), free, total);
        if state != member.local_disk() {
            tracing::warn!(?state, free, total, "disk state changed");
        }
        member.set_local_disk(state);
        metrics::gauge!(m::DISK_FREE_BYTES).set(free as f64);
        metrics::gauge!(m::DISK_TOTAL_BYTES).set(total as f64);
        if report_due(reported, state, Instant::now()) && report(&member, state, free, total).await
        {
            reported = Some((state, Instant::now()));
        }
    }
}

/// Whether a sample of `state` taken at `now` is reported, given the last committed
/// report: the first one, on a change, else once per [`SLOW_REPORT_PACE`].
fn report_due(reported: Option<(DiskState, Instant)>, state: DiskState, now: Instant) -> bool {
    match reported {
        None => true,
        Some((last, at)) => last != state || now.duration_since(at) >= SLOW_REPORT_PACE,
    }
}

/// Proposes a disk report; false if it did not commit (retried on the next tick).
async fn report(member: &Member, state: DiskState, free_bytes: u64, total_bytes: u64) -> bool {
    let command = Command::ReportDisk {
        node: member.id,
        report: DiskReport {
            state,
            free_bytes,
            total_bytes,
            reported_at_ms: chrono::Utc::now().timestamp_millis(),
        },
    };
    match member.propose(command).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, "disk report not committed yet");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample every 200 ms for ten minutes with one change of state: 1 + 1 + one per
    /// minute of reports, not 3000.
    #[test]
    fn reports_go_out_on_a_change_or_once_a_minute() {
        let start = Instant::now();
        let mut reported = None;
        let mut reports = Vec::new();
        for tick in 0..3000u64 {
            let now = start + Duration::from_millis(200 * tick);
            let state = if tick >= 1500 {
                DiskState::Pressure
            } else {
                DiskState::Ok
            };
            if report_due(reported, state, now) {
                reported = Some((state, now));
                reports.push((tick, state));
            }
        }
        let at = |tick| (tick, DiskState::Ok);
        let pressed = |tick| (tick, DiskState::Pressure);
        assert_eq!(
            reports,
            [
                at(0),
                at(300),
                at(600),
                at(900),
                at(1200),
                pressed(1500),
                pressed(1800),
                pressed(2100),
                pressed(2400),
                pressed(2700),
            ]
        );
    }

    #[test]
    fn sampling_a_real_file_system_gives_sane_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (free, total) = sample(dir.path()).expect("statvfs");
        assert!(total > 0 && free <= total);
    }

    #[test]
    fn states_round_trip_through_u8() {
        for state in [DiskState::Ok, DiskState::Pressure, DiskState::Full] {
            assert_eq!(from_u8(state as u8), state);
        }
    }
}
