//! Sans-IO pieces of quorumcast's resumable-session extension of `POST /v2/record`
//! (specified in `docs/protocol.md`).
//!
//! The client names its session (`Quorumcast-Session`); on a reconnect it also says up to where
//! it has acks (`Quorumcast-Resume`); the recorder answers the offset the body must start at
//! (`Quorumcast-Resume-Offset`). Whether that answer can be used is decided here, without any
//! I/O, by [`ResumePoint::plan`]; so is the order in which recorders are tried after a failure
//! ([`failover_order`]) and the pause between rounds of attempts ([`Backoff`]).

use std::ops::Range;
use std::time::Duration;

use super::recorder::RecorderAddr;

/// Request header naming the session; its presence means "this client speaks the extension".
pub const SESSION_HEADER: &str = "quorumcast-session";
/// Request header of a reconnect: the client's last acknowledged offset.
pub const RESUME_HEADER: &str = "quorumcast-resume";
/// Response header of the `200`: the offset the request body starts at.
pub const RESUME_OFFSET_HEADER: &str = "quorumcast-resume-offset";

/// Longest session id the extension allows.
const MAX_SESSION_ID: usize = 64;
/// Digits of the largest `u64`; a longer offset cannot be valid.
const MAX_OFFSET_DIGITS: usize = 20;

/// A session id: 1–64 characters of `[A-Za-z0-9._-]`, so it is a valid header value and a
/// safe file-system component on any recorder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl SessionId {
    /// The id our client uses: the recording's UUID (the header's `connectionID`).
    pub fn from_uuid(id: uuid::Uuid) -> Self {
        let id = id.hyphenated().to_string();
        debug_assert!(Self::is_valid(&id), "a hyphenated UUID fits the grammar");
        Self(id)
    }

    /// Whether `id` fits the extension's grammar.
    fn is_valid(id: &str) -> bool {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
        !id.is_empty() && id.len() <= MAX_SESSION_ID && id.bytes().all(allowed)
    }

    /// The id as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a `Quorumcast-Resume-Offset` value: plain decimal digits only (no sign, no spaces),
/// because a lenient parse of a malformed answer could make us resend from a wrong offset.
pub fn parse_offset(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > MAX_OFFSET_DIGITS || !value.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// What the client holds when it (re)connects; the recorder's answer is checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// Last acknowledged offset: every byte before it is durable on a majority.
    pub acked: u64,
    /// Highest offset ever handed to any recorder: no recorder can hold more.
    pub sent: u64,
    /// First offset still in the client's unacked buffer: it cannot resend anything earlier.
    pub buffered_from: u64,
}

/// A `Quorumcast-Resume-Offset` the client must not use: a protocol error by that recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// Below the last ack: the recorder lost acknowledged bytes.
    #[error("offered to resume at byte {offered}, below the last ack {acked}")]
    BelowAcked {
        /// The recorder's offset.
        offered: u64,
        /// The client's last ack.
        acked: u64,
    },
    /// Beyond what was ever sent: the recorder claims bytes the client never produced.
    #[error("offered to resume at byte {offered}, beyond the {sent} bytes sent")]
    BeyondSent {
        /// The recorder's offset.
        offered: u64,
        /// Bytes ever sent.
        sent: u64,
    },
    /// Before the buffer: the client no longer holds those bytes (cannot happen while the
    /// buffer starts at the last ack; checked so a bug cannot turn into a gap).
    #[error("offered to resume at byte {offered}, but bytes before {buffered_from} are gone")]
    NotBuffered {
        /// The recorder's offset.
        offered: u64,
        /// First buffered offset.
        buffered_from: u64,
    },
    /// A reconnect was answered without an offset: a stock recorder (or one that ignored the
    /// extension) would start a second recording instead of continuing this one.
    #[error("answered a resume without Quorumcast-Resume-Offset")]
    Missing,
}

/// Checks a recorder's `200` to a `POST /v2/record` that carried `Quorumcast-Session`.
/// `resume` is what the request asked (`None`: a new session); `offered` is the answer's
/// `Quorumcast-Resume-Offset`. A new session may be answered without one (a stock recorder,
/// which then cannot fail over), but if it has one it must be 0.
pub fn check_answer(resume: Option<&ResumePoint>, offered: Option<u64>) -> Result<(), ResumeError> {
    match (resume, offered) {
        (None, None) => Ok(()),
        (None, Some(n)) => ResumePoint::NEW.plan(n).map(drop),
        (Some(_), None) => Err(ResumeError::Missing),
        (Some(point), Some(n)) => point.plan(n).map(drop),
    }
}

impl ResumePoint {
    /// A new session: nothing acked, sent or buffered.
    pub const NEW: Self = Self {
        acked: 0,
        sent: 0,
        buffered_from: 0,
    };

    /// Decides whether the recorder's offset `offered` can be used; on success, the range of
    /// already-sent bytes to send again (new output follows it).
    pub fn plan(&self, offered: u64) -> Result<Range<u64>, ResumeError> {
        if offered < self.acked {
            return Err(ResumeError::BelowAcked {
                offered,
                acked: self.acked,
            });
        }
        if offered > self.sent {
            return Err(ResumeError::BeyondSent {
                offered,
                sent: self.sent,
            });
        }
        if offered < self.buffered_from {
            return Err(ResumeError::NotBuffered {
                offered,
                buffered_from: self.buffered_from,
            });
        }
        Ok(offered..self.sent)
    }
}

/// The order to try recorders in after `failed` broke: the ones after it in the configured
/// order, wrapping around, `failed` itself last (it may come back, but is the least likely).
pub fn failover_order(addrs: &[RecorderAddr], failed: &RecorderAddr) -> Vec<RecorderAddr> {
    let after = addrs.iter().position(|a| a == failed).map_or(0, |i| i + 1);
    let mut order = addrs[after..].to_vec();
    order.extend_from_slice(&addrs[..after]);
    order
}

/// Pause between rounds of failover attempts, so recorders that all refuse fast (e.g. while
/// the set elects a leader) are not hammered: doubles from [`Backoff::FIRST`] up to
/// [`Backoff::MAX`].
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The next pause.
    next: Duration,
}

impl Backoff {
    /// First pause: short, since a takeover often needs only one Raft round trip.
    pub const FIRST: Duration = Duration::from_millis(50);
    /// Longest pause: still several rounds within the default 10 s deadline.
    pub const MAX: Duration = Duration::from_secs(1);

    /// Starts at [`Backoff::FIRST`].
    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The pause to take now; the following one is longer.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (pause * 2).min(Self::MAX);
        pause
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(acked: u64, sent: u64) -> ResumePoint {
        ResumePoint {
            acked,
            sent,
            buffered_from: acked,
        }
    }

    #[test]
    fn resume_between_ack_and_sent_resends_the_rest() {
        let p = point(100, 250);
        assert_eq!(p.plan(100), Ok(100..250));
        assert_eq!(p.plan(180), Ok(180..250));
        assert_eq!(p.plan(250), Ok(250..250));
    }

    #[test]
    fn resume_below_the_ack_is_refused() {
        assert_eq!(
            point(100, 250).plan(99),
            Err(ResumeError::BelowAcked {
                offered: 99,
                acked: 100
            })
        );
    }

    #[test]
    fn resume_beyond_sent_is_refused() {
        assert_eq!(
            point(100, 250).plan(251),
            Err(ResumeError::BeyondSent {
                offered: 251,
                sent: 250
            })
        );
    }

    #[test]
    fn resume_before_the_buffer_is_refused() {
        let p = ResumePoint {
            acked: 10,
            sent: 50,
            buffered_from: 20,
        };
        assert_eq!(
            p.plan(15),
            Err(ResumeError::NotBuffered {
                offered: 15,
                buffered_from: 20
            })
        );
    }

    #[test]
    fn a_new_session_must_start_at_zero() {
        assert_eq!(ResumePoint::NEW.plan(0), Ok(0..0));
        assert!(matches!(
            ResumePoint::NEW.plan(1),
            Err(ResumeError::BeyondSent { .. })
        ));
    }

    #[test]
    fn answers_are_checked_against_the_request() {
        let p = point(10, 20);
        assert_eq!(check_answer(None, None), Ok(()));
        assert_eq!(check_answer(None, Some(0)), Ok(()));
        assert!(check_answer(None, Some(3)).is_err());
        assert_eq!(check_answer(Some(&p), None), Err(ResumeError::Missing));
        assert_eq!(check_answer(Some(&p), Some(15)), Ok(()));
        assert!(check_answer(Some(&p), Some(9)).is_err());
        assert!(check_answer(Some(&p), Some(21)).is_err());
    }

    #[test]
    fn offsets_are_plain_decimal() {
        assert_eq!(parse_offset(b"0"), Some(0));
        assert_eq!(parse_offset(b"12345"), Some(12345));
        assert_eq!(parse_offset(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b" 5",
            b"5 ",
            b"0x10",
            b"1e3",
            b"18446744073709551616",
            b"123456789012345678901",
        ] {
            assert_eq!(
                parse_offset(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn session_ids_follow_the_grammar() {
        let uuid = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let id = SessionId::from_uuid(uuid);
        assert_eq!(id.as_str(), "01234567-89ab-cdef-0123-456789abcdef");
        assert!(SessionId::is_valid(id.as_str()));
        assert!(SessionId::is_valid("a.b_c-D9"));
        assert!(SessionId::is_valid(&"x".repeat(64)));
        for bad in ["", "a b", "a/b", "é", "a\r\nb", &"x".repeat(65)] {
            assert!(!SessionId::is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn failover_starts_after_the_failed_recorder_and_tries_it_last() {
        let addrs: Vec<RecorderAddr> = ["a:1", "b:2", "c:3"]
            .iter()
            .map(|a| RecorderAddr::parse(a).unwrap())
            .collect();
        let names =
            |order: Vec<RecorderAddr>| order.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            names(failover_order(&addrs, &addrs[0])),
            ["b:2", "c:3", "a:1"]
        );
        assert_eq!(
            names(failover_order(&addrs, &addrs[1])),
            ["c:3", "a:1", "b:2"]
        );
        assert_eq!(
            names(failover_order(&addrs, &addrs[2])),
            ["a:1", "b:2", "c:3"]
        );
        let stranger = RecorderAddr::parse("z:9").unwrap();
        assert_eq!(
            names(failover_order(&addrs, &stranger)),
            ["a:1", "b:2", "c:3"]
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new();
        let pauses: Vec<_> = (0..8).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
    }
}
