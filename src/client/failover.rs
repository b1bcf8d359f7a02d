//! Mid-session failover: finding a recorder that takes over a recording whose stream broke.
//!
//! A [`Reconnect`] runs in its own task so the session keeps reading the command's output into
//! the unacked buffer meanwhile. It tries the recorders in [`failover_order`] (the one after
//! the failed recorder first, the failed one last), each with `Quorumcast-Resume` set to the
//! last ack, round after round with a [`Backoff`] pause, until one accepts with a usable
//! `Quorumcast-Resume-Offset` or the failover deadline passes.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::recorder::{self, ConnectError, Extension, RecorderAddr, Timeouts, Transport};
use super::resume::{failover_order, Backoff, ResumePoint, SessionId};

/// Limit for one TCP connect during a failover, shorter than Tailscale's 5 s: a recorder that
/// does not even answer SYN must not eat most of the failover deadline.
const FAILOVER_DIAL: Duration = Duration::from_secs(2);
/// Limit for one `HEAD /v2/record` probe during a failover (Tailscale's is 10 s), for the
/// same reason. The `POST` itself may take longer (a takeover goes through Raft and fences
/// replicas); it is bounded by the deadline only.
const FAILOVER_PROBE: Duration = Duration::from_secs(3);

/// What a failover needs to know; fixed for the whole recording.
#[derive(Debug, Clone)]
pub struct FailoverConfig {
    /// Every configured recorder, in the configured order.
    pub addrs: Vec<RecorderAddr>,
    /// The session id sent on every (re)connect.
    pub session: SessionId,
    /// Longest time from the break to an accepted stream (`--failover-deadline`).
    pub deadline: Duration,
    /// Ack window of the new stream (`--ack-timeout`).
    pub ack_window: Duration,
}

/// A completed failover, for the one line on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The recorder whose stream broke.
    pub from: RecorderAddr,
    /// The recorder that took over.
    pub to: RecorderAddr,
    /// From noticing the break to the accepted stream.
    pub elapsed: Duration,
    /// The `Quorumcast-Resume-Offset` we resumed at.
    pub resumed_at: u64,
}

impl std::fmt::Display for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "recording moved from {} to {} after {} ms (resumed at byte {})",
            self.from,
            self.to,
            self.elapsed.as_millis(),
            self.resumed_at
        )
    }
}

/// A failover in progress. Dropping it stops the attempts.
#[derive(Debug)]
pub struct Reconnect {
    /// The recorder whose stream broke.
    pub from: RecorderAddr,
    /// Why it broke (`Display` of the upload error), for the final message if nobody takes over.
    pub cause: String,
    /// When the break was noticed.
    pub started: Instant,
    /// The attempts; yields the new stream, or the last round's failure per recorder.
    task: JoinHandle<Result<Transport, Vec<String>>>,
}

impl Reconnect {
    /// Starts looking for a recorder that resumes the session at `point`.
    pub fn start(
        config: Arc<FailoverConfig>,
        from: RecorderAddr,
        point: ResumePoint,
        cause: String,
    ) -> Self {
        tracing::debug!(
            recorder = %from,
            acked = point.acked,
            %cause,
            "recording stream broke, failing over"
        );
        let task = tokio::spawn(take_over(config, from.clone(), point));
        Self {
            from,
            cause,
            started: Instant::now(),
            task,
        }
    }

    /// Waits for the outcome. Cancel-safe (awaiting a `JoinHandle` by reference); must not be
    /// called again once it returned.
    pub async fn outcome(&mut self) -> Result<Transport, Vec<String>> {
        match (&mut self.task).await {
            Ok(outcome) => outcome,
            Err(e) => Err(vec![format!("failover task ended: {e}")]),
        }
    }
}

impl Drop for Reconnect {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Rounds of attempts until a recorder accepts or the deadline passes.
async fn take_over(
    config: Arc<FailoverConfig>,
    from: RecorderAddr,
    point: ResumePoint,
) -> Result<Transport, Vec<String>> {
    let deadline = Instant::now() + config.deadline;
    let order = failover_order(&config.addrs, &from);
    let ext = Extension {
        session: config.session.clone(),
        resume: Some(point),
    };
    let mut backoff = Backoff::new();
    // Only the last round's reasons are kept: one per recorder, so this stays bounded.
    let mut failures = vec![format!("no attempt within {:?}", config.deadline)];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(failures);
        }
        let timeouts = Timeouts {
            dial: FAILOVER_DIAL,
            probe: FAILOVER_PROBE,
            overall: remaining,
            ack_window: config.ack_window,
        };
        match recorder::connect(&order, timeouts, Some(&ext)).await {
            Ok(transport) => return Ok(transport),
            Err(ConnectError::AllFailed(reasons)) => failures = reasons,
            Err(e @ ConnectError::NoAddress) => return Err(vec![e.to_string()]),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(backoff.next_pause().min(remaining)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_is_one_line_with_its_duration_and_offset() {
        let moved = Moved {
            from: RecorderAddr::parse("127.0.0.1:8081").unwrap(),
            to: RecorderAddr::parse("127.0.0.1:8082").unwrap(),
            elapsed: Duration::from_micros(412_700),
            resumed_at: 12345,
        };
        assert_eq!(
            moved.to_string(),
            "recording moved from 127.0.0.1:8081 to 127.0.0.1:8082 after 412 ms \
             (resumed at byte 12345)"
        );
    }
}
