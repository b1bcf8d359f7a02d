//! The replication stream's frames: owner → replica and back. Encoding is pure (no I/O);
//! [`read_frame`]/[`write_frame`] move frames over a QUIC stream.
//!
//! A frame is `[tag: u8][len: u32 BE][body]`. `Data` bodies are `[offset: u64 BE][bytes]`
//! so recording bytes are never re-encoded; every other body is JSON (small, rare, and
//! readable in a packet capture). Unknown tags are errors: both ends speak [`VERSION`].

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::cluster::types::NodeId;
use crate::storage::index::SessionState;

/// Protocol version carried in [`OpenCopy`]; a replica refuses other versions.
pub const VERSION: u8 = 1;
/// Largest recording chunk in one `Data` frame.
pub const MAX_CHUNK: usize = 1024 * 1024;
/// Largest frame body accepted (a chunk plus its offset, or a JSON body).
pub const MAX_BODY: u32 = (MAX_CHUNK + 64 * 1024) as u32;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame body of {0} bytes is over the {MAX_BODY} byte limit")]
    TooLarge(u32),
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error("stream ended")]
    Closed,
}

/// First frame of a stream: which session, at which epoch, stored where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenCopy {
    pub version: u8,
    pub session: String,
    pub epoch: u64,
    pub owner: NodeId,
    pub node_dir: String,
    pub file_name: String,
}

/// Owner → replica.
#[derive(Debug, Clone, PartialEq)]
pub enum ToReplica {
    Open(OpenCopy),
    /// Recording bytes at `offset`. The replica appends them if `offset` is at or before
    /// its end (the overlap is skipped: same offset, same byte), never leaving a gap.
    Data {
        offset: u64,
        bytes: Bytes,
    },
    /// The owner is alive (idle sessions send no data).
    Ping,
    /// The recording ended at `len` in `state`; make it durable and mark it.
    Seal {
        len: u64,
        state: SessionState,
    },
}

/// Replica → owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToOwner {
    /// Accepted the stream; this many bytes are durable here. Send from there.
    Ready { durable: u64 },
    /// This many bytes are durable here.
    Durable { offset: u64 },
    /// Refused (stale epoch, gap, storage failure); `fence` is the epoch the replica holds.
    Refused { reason: String, fence: u64 },
    /// Sealed at `len`.
    Sealed { len: u64 },
}

#[derive(Serialize, Deserialize)]
struct SealBody {
    len: u64,
    state: SessionState,
}

mod tag {
    pub const OPEN: u8 = 1;
    pub const DATA: u8 = 2;
    pub const PING: u8 = 3;
    pub const SEAL: u8 = 4;
    pub const TO_OWNER: u8 = 10;
}

/// Length of a `Data` frame's bytes before the recording bytes: tag, body length, offset.
pub const DATA_HEADER: usize = 1 + 4 + 8;

/// The head of a `Data` frame carrying `len` recording bytes at `offset`, so that a sender
/// can hand the recording bytes to the stream as they are, without copying them into a
/// frame ([`write_data`]).
pub fn data_header(offset: u64, len: usize) -> Result<[u8; DATA_HEADER], WireError> {
    let body = 8usize.saturating_add(len);
    let body = match u32::try_from(body) {
        Ok(body) if body <= MAX_BODY => body,
        _ => return Err(WireError::TooLarge(u32::try_from(body).unwrap_or(u32::MAX))),
    };
    let mut head = [0u8; DATA_HEADER];
    head[0] = tag::DATA;
    head[1..5].copy_from_slice(&body.to_be_bytes());
    head[5..].copy_from_slice(&offset.to_be_bytes());
    Ok(head)
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    serde_json::to_vec(value).map_err(|e| WireError::Malformed(e.to_string()))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))
}

impl ToReplica {
    /// The frame's bytes. `Data` is split by the sender into chunks of at most
    /// [`MAX_CHUNK`] before it gets here.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        match self {
            ToReplica::Open(open) => Ok(frame(tag::OPEN, &json(open)?)),
            ToReplica::Data { offset, bytes } => {
                let mut out = Vec::with_capacity(DATA_HEADER + bytes.len());
                out.extend_from_slice(&data_header(*offset, bytes.len())?);
                out.extend_from_slice(bytes);
                Ok(out)
            }
            ToReplica::Ping => Ok(frame(tag::PING, &[])),
            ToReplica::Seal { len, state } => Ok(frame(
                tag::SEAL,
                &json(&SealBody {
                    len: *len,
                    state: *state,
                })?,
            )),
        }
    }

    pub fn decode(tag: u8, body: Bytes) -> Result<ToReplica, WireError> {
        match tag {
            tag::OPEN => Ok(ToReplica::Open(parse(&body)?)),
            tag::DATA => {
                let offset = body
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| {
                        WireError::Malformed("data frame shorter than its offset".into())
                    })?;
                Ok(ToReplica::Data {
                    offset,
                    bytes: body.slice(8..),
                })
            }
            tag::PING => Ok(ToReplica::Ping),
            tag::SEAL => {
                let seal: SealBody = parse(&body)?;
                Ok(ToReplica::Seal {
                    len: seal.len,
                    state: seal.state,
                })
            }
            other => Err(WireError::UnknownTag(other)),
        }
    }
}

impl ToOwner {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        Ok(frame(tag::TO_OWNER, &json(self)?))
    }

    pub fn decode(tag: u8, body: Bytes) -> Result<ToOwner, WireError> {
        match tag {
            tag::TO_OWNER => parse(&body),
            other => Err(WireError::UnknownTag(other)),
        }
    }
}

/// Reads one frame's tag and body.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<(u8, Bytes), WireError> {
    let mut head = [0u8; 5];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(WireError::Closed),
        Err(e) => return Err(WireError::Stream(e.to_string())),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_BODY {
        return Err(WireError::TooLarge(len));
    }
    // Filled from quinn's received chunks: one copy, and no zeroing of up to a MiB first.
    let len = len as usize;
    let mut body = BytesMut::with_capacity(len);
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(WireError::Stream("stream finished inside a frame".into())),
            Err(e) => return Err(WireError::Stream(e.to_string())),
        }
    }
    Ok((head[0], body.freeze()))
}

pub async fn write_frame(send: &mut quinn::SendStream, frame: &[u8]) -> Result<(), WireError> {
    send.write_all(frame)
        .await
        .map_err(|e| WireError::Stream(e.to_string()))
}

/// Sends a `Data` frame without copying `bytes`: quinn keeps the `Bytes` it is given.
pub async fn write_data(
    send: &mut quinn::SendStream,
    offset: u64,
    bytes: Bytes,
) -> Result<(), WireError> {
    let head = Bytes::copy_from_slice(&data_header(offset, bytes.len())?);
    send.write_all_chunks(&mut [head, bytes])
        .await
        .map_err(|e| WireError::Stream(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: ToReplica) {
        let bytes = frame.encode().expect("encode");
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len + 5, bytes.len());
        let back =
            ToReplica::decode(bytes[0], Bytes::copy_from_slice(&bytes[5..])).expect("decode");
        assert_eq!(back, frame);
    }

    #[test]
    fn owner_frames_round_trip() {
        round_trip(ToReplica::Open(OpenCopy {
            version: VERSION,
            session: "s".into(),
            epoch: 3,
            owner: 2,
            node_dir: "100.64.0.1".into(),
            file_name: "2026-11-25T15:58:29Z.cast".into(),
        }));
        round_trip(ToReplica::Data {
            offset: 1 << 40,
            bytes: Bytes::from_static(b"[0.1,\"o\",\"hi\"]\n\xff"),
        });
        round_trip(ToReplica::Ping);
        round_trip(ToReplica::Seal {
            len: 9,
            state: SessionState::Complete,
        });
    }

    #[test]
    fn a_data_header_is_the_head_of_the_encoded_frame_and_refuses_oversized_chunks() {
        let bytes = Bytes::from_static(b"[1.5,\"o\",\"x\"]\n");
        let encoded = ToReplica::Data {
            offset: 77,
            bytes: bytes.clone(),
        }
        .encode()
        .expect("encode");
        let head = data_header(77, bytes.len()).expect("header");
        assert_eq!(&encoded[..DATA_HEADER], &head);
        assert_eq!(&encoded[DATA_HEADER..], &bytes[..]);
        assert!(data_header(0, MAX_CHUNK).is_ok());
        assert!(matches!(
            data_header(0, MAX_BODY as usize),
            Err(WireError::TooLarge(_))
        ));
    }

    #[test]
    fn replica_frames_round_trip() {
        for frame in [
            ToOwner::Ready { durable: 5 },
            ToOwner::Durable { offset: 7 },
            ToOwner::Refused {
                reason: "stale epoch".into(),
                fence: 4,
            },
            ToOwner::Sealed { len: 9 },
        ] {
            let bytes = frame.encode().expect("encode");
            let back =
                ToOwner::decode(bytes[0], Bytes::copy_from_slice(&bytes[5..])).expect("decode");
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        assert!(ToReplica::decode(tag::DATA, Bytes::from_static(b"123")).is_err());
        assert!(ToReplica::decode(99, Bytes::new()).is_err());
        assert!(ToReplica::decode(tag::OPEN, Bytes::from_static(b"{")).is_err());
        assert!(ToOwner::decode(tag::OPEN, Bytes::new()).is_err());
    }
}
