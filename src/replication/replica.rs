//! Serving replication streams: an owner streams a recording, this node keeps a copy.
//!
//! One stream per session per replica. The first frame names the session and the
//! owner's epoch; the peer must be that owner (its certificate says who it is). Then
//! data frames are appended in order, durable offsets flow back, and a seal ends it.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::copies::{Copies, CopyError};
use super::wire::{read_frame, write_frame, ToOwner, ToReplica, WireError, VERSION};
use crate::cluster::transport::StreamHandler;
use crate::cluster::types::NodeId;
use crate::storage::Storage;

/// Frames read ahead of the appender; each is at most one chunk (1 MiB), so this bounds
/// a stream's buffered memory to a few MiB and applies back-pressure through QUIC.
const READ_AHEAD: usize = 4;

#[derive(Clone)]
pub struct ReplicaStreams {
    pub copies: Arc<Copies>,
    pub storage: Storage,
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("protocol: {0}")]
    Protocol(String),
}

impl StreamHandler for ReplicaStreams {
    async fn handle(&self, from: NodeId, mut send: quinn::SendStream, recv: quinn::RecvStream) {
        if let Err(e) = self.serve(from, &mut send, recv).await {
            let fence = match &e {
                ServeError::Copy(CopyError::Stale { fence, .. }) => *fence,
                _ => 0,
            };
            tracing::debug!(from, error = %e, "replication stream ended");
            let refused = ToOwner::Refused {
                reason: e.to_string(),
                fence,
            };
            if let Ok(frame) = refused.encode() {
                let _ = write_frame(&mut send, &frame).await;
            }
        }
        let _ = send.finish();
    }
}

impl ReplicaStreams {
    async fn serve(
        &self,
        from: NodeId,
        send: &mut quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<(), ServeError> {
        let (tag, body) = read_frame(&mut recv).await?;
        let ToReplica::Open(open) = ToReplica::decode(tag, body)? else {
            return Err(ServeError::Protocol("first frame must be Open".into()));
        };
        if open.version != VERSION {
            return Err(ServeError::Protocol(format!(
                "replication version {} (want {VERSION})",
                open.version
            )));
        }
        if open.owner != from {
            return Err(ServeError::Protocol(format!(
                "node {from} streams for owner {}",
                open.owner
            )));
        }
        let copy = self.copies.open(&open).await?;
        let mut durable = copy.durable();
        let ready = ToOwner::Ready {
            durable: *durable.borrow_and_update(),
        };
        write_frame(send, &ready.encode()?).await?;
        let (frames_tx, mut frames) = mpsc::channel(READ_AHEAD);
        // Reading in its own task keeps partial reads safe from select! cancellation.
        let reader = tokio::spawn(async move {
            loop {
                let frame = read_frame(&mut recv)
                    .await
                    .and_then(|(tag, body)| ToReplica::decode(tag, body));
                let end = frame.is_err();
                if frames_tx.send(frame).await.is_err() || end {
                    return;
                }
            }
        });
        let result = async {
            loop {
                tokio::select! {
                    frame = frames.recv() => {
                        let Some(frame) = frame else { return Ok(()) };
                        copy.touch();
                        match frame? {
                            ToReplica::Data { offset, bytes } => {
                                copy.append(open.epoch, offset, bytes).await?;
                            }
                            ToReplica::Ping => {}
                            ToReplica::Seal { len, state } => {
                                copy.seal(&self.storage, open.epoch, len, state).await?;
                                write_frame(send, &ToOwner::Sealed { len }.encode()?).await?;
                                self.copies.forget(&open.session);
                                return Ok(());
                            }
                            ToReplica::Open(_) => return Err(ServeError::Protocol("second Open".into())),
                        }
                    }
                    changed = durable.changed() => {
                        if changed.is_err() {
                            return Err(ServeError::Protocol("copy closed".into()));
                        }
                        let offset = *durable.borrow_and_update();
                        write_frame(send, &ToOwner::Durable { offset }.encode()?).await?;
                    }
                }
            }
        }
        .await;
        reader.abort();
        match result {
            Err(ServeError::Wire(WireError::Closed)) => Ok(()),
            other => other,
        }
    }
}
