//! Test-only in-process recorders with scripted behaviour, to exercise the client's protocol
//! code (probe, v1 `100 Continue`, v2 acks and errors) without the real server.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::recorder::RecorderAddr;

/// Response frames a test can inject into a v2 stream (plenty for any test).
const INJECT_QUEUE: usize = 64;

/// What the fake recorder does.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// HTTP/1.1 only: `POST /record` reads the body (hyper sends `100 Continue`), answers 200.
    V1,
    /// Answers every request with this status at once, without reading a body.
    Refuse(StatusCode),
    /// h2c and HTTP/1.1; `POST /v2/record` streams acks (after every chunk when `auto_ack`)
    /// plus whatever the test injects.
    V2 {
        /// Ack each received chunk and the end of the body.
        auto_ack: bool,
    },
}

/// A running fake recorder.
pub struct FakeRecorder {
    /// Where it listens.
    pub addr: RecorderAddr,
    /// Every body byte received, over all sessions.
    received: Arc<Mutex<Vec<u8>>>,
    /// Injector of the current v2 response, once a v2 session started.
    inject: watch::Receiver<Option<mpsc::WeakSender<Bytes>>>,
    /// The accept loop.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Resp = Response<BoxBody<Bytes, Infallible>>;

struct Shared {
    behaviour: Behaviour,
    received: Arc<Mutex<Vec<u8>>>,
    inject: watch::Sender<Option<mpsc::WeakSender<Bytes>>>,
}

impl FakeRecorder {
    /// Starts a recorder on a free loopback port.
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = RecorderAddr::parse(&listener.local_addr().unwrap().to_string()).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (inject_tx, inject) = watch::channel(None);
        let shared = Arc::new(Shared {
            behaviour,
            received: received.clone(),
            inject: inject_tx,
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(shared.clone(), req));
                    let io = TokioIo::new(stream);
                    let _ = match matches!(behaviour, Behaviour::V1) {
                        true => hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await
                            .map_err(|e| e.to_string()),
                        false => hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                            .map_err(|e| e.to_string()),
                    };
                });
            }
        });
        Self {
            addr,
            received,
            inject,
            task,
        }
    }

    /// All body bytes received so far.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }

    /// Sends a raw frame (e.g. `{"ack":5}` or `{"error":"x"}`) on the current v2 response.
    pub async fn inject(&self, frame: &str) {
        let mut watch = self.inject.clone();
        let weak = watch.wait_for(Option::is_some).await.unwrap().clone();
        let tx = weak
            .and_then(|w| w.upgrade())
            .expect("v2 response already ended");
        tx.send(Bytes::from(frame.to_owned())).await.unwrap();
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let empty = |status| {
        let mut r = Response::new(Empty::new().boxed());
        *r.status_mut() = status;
        r
    };
    Ok(match (shared.behaviour, req.method(), req.uri().path()) {
        (Behaviour::Refuse(status), _, _) => empty(status),
        (Behaviour::V1, &Method::POST, "/record") => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            match body {
                Ok(bytes) => {
                    shared.received.lock().unwrap().extend_from_slice(&bytes);
                    empty(StatusCode::OK)
                }
                Err(_) => empty(StatusCode::BAD_REQUEST),
            }
        }
        (Behaviour::V2 { .. }, &Method::HEAD, "/v2/record") => empty(StatusCode::OK),
        (Behaviour::V2 { auto_ack }, &Method::POST, "/v2/record") => {
            v2_session(&shared, req, auto_ack)
        }
        _ => empty(StatusCode::NOT_FOUND),
    })
}

/// Answers 200 at once with a streamed ack body; a task reads the request body.
fn v2_session(shared: &Shared, req: Request<Incoming>, auto_ack: bool) -> Resp {
    let (tx, rx) = mpsc::channel::<Bytes>(INJECT_QUEUE);
    // Weak: the response ends when the session task drops its sender.
    shared.inject.send_replace(Some(tx.downgrade()));
    let received = shared.received.clone();
    tokio::spawn(async move {
        let mut body = req.into_body();
        let mut count = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                count += data.len();
                received.lock().unwrap().extend_from_slice(&data);
                if auto_ack {
                    let _ = tx.send(Bytes::from(format!("{{\"ack\":{count}}}\n"))).await;
                }
            }
        }
        if auto_ack {
            let _ = tx.send(Bytes::from(format!("{{\"ack\":{count}}}\n"))).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::new(BodyExt::boxed(StreamBody::new(stream)))
}
