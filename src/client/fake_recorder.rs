//! Test-only in-process recorders with scripted behaviour, to exercise the client's protocol
//! code (probe, v1 `100 Continue`, v2 acks and errors, the resumable extension, a recorder
//! dying mid-stream) without the real server.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::recorder::RecorderAddr;
use super::resume::{RESUME_HEADER, RESUME_OFFSET_HEADER, SESSION_HEADER};

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
    /// plus whatever the test injects. A stock recorder: the extension headers are ignored.
    V2 {
        /// Ack each received chunk and the end of the body.
        auto_ack: bool,
    },
    /// Like `V2`, but speaks the resumable extension: answers `Quorumcast-Resume-Offset`
    /// and acks absolute offsets.
    Resumable {
        /// When to ack.
        acks: Acks,
        /// Which offset to answer.
        offer: Offer,
    },
    /// Probe `200`, but `POST /v2/record` is refused with this status and one-line reason
    /// (e.g. a node that cannot take over a session).
    RefusePost(StatusCode, &'static str),
}

/// When a v2 fake acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Only what the test injects.
    Manual,
    /// Every received chunk and the end of the body.
    Every,
    /// Half of what was received (so bytes stay unacked), all of it at the end of the body.
    Half,
}

/// The `Quorumcast-Resume-Offset` a resumable fake answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The client's `Quorumcast-Resume` (0 for a new session): a correct recorder whose
    /// replicas hold exactly the acked bytes.
    Echo,
    /// Always this offset, whatever was asked (to test a misbehaving recorder).
    Fixed(u64),
    /// No header at all (a recorder that ignores a resume).
    Missing,
}

/// One `POST /v2/record` as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// `Quorumcast-Session`.
    pub session: Option<String>,
    /// `Quorumcast-Resume`.
    pub resume: Option<String>,
    /// The `Quorumcast-Resume-Offset` answered.
    pub offered: Option<u64>,
}

/// A running fake recorder.
pub struct FakeRecorder {
    /// Where it listens.
    pub addr: RecorderAddr,
    /// Every body byte received, over all sessions.
    received: Arc<Mutex<Vec<u8>>>,
    /// Every `POST /v2/record`, in order.
    requests: Arc<Mutex<Vec<SeenRequest>>>,
    /// Injector of the current v2 response, once a v2 session started.
    inject: watch::Receiver<Option<mpsc::WeakSender<Bytes>>>,
    /// What it does; tests may change it while it runs.
    behaviour: Arc<Mutex<Behaviour>>,
    /// The accept loop.
    task: tokio::task::JoinHandle<()>,
    /// Served connections, aborted by [`Self::kill`] (a test makes only a few).
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Drop for FakeRecorder {
    fn drop(&mut self) {
        self.kill();
    }
}

type Resp = Response<BoxBody<Bytes, Infallible>>;

struct Shared {
    behaviour: Arc<Mutex<Behaviour>>,
    received: Arc<Mutex<Vec<u8>>>,
    requests: Arc<Mutex<Vec<SeenRequest>>>,
    inject: watch::Sender<Option<mpsc::WeakSender<Bytes>>>,
}

impl FakeRecorder {
    /// Starts a recorder on a free loopback port.
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = RecorderAddr::parse(&listener.local_addr().unwrap().to_string()).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (inject_tx, inject) = watch::channel(None);
        let shared = Arc::new(Shared {
            behaviour: behaviour.clone(),
            received: received.clone(),
            requests: requests.clone(),
            inject: inject_tx,
        });
        let task = tokio::spawn(accept_loop(listener, shared, conns.clone()));
        Self {
            addr,
            received,
            requests,
            inject,
            behaviour,
            task,
            conns,
        }
    }

    /// All body bytes received so far.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }

    /// Every `POST /v2/record` so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Changes the behaviour for requests from now on.
    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Dies like a killed process: stops listening and drops every connection at once.
    pub fn kill(&self) {
        self.task.abort();
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
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

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let shared = shared.clone();
        let v1_only = matches!(*shared.behaviour.lock().unwrap(), Behaviour::V1);
        let conn = tokio::spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), req));
            let io = TokioIo::new(stream);
            let _ = match v1_only {
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
        conns.lock().unwrap().push(conn.abort_handle());
    }
}

fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Empty::new().boxed());
    *r.status_mut() = status;
    r
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let behaviour = *shared.behaviour.lock().unwrap();
    Ok(match (behaviour, req.method(), req.uri().path()) {
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
        (
            Behaviour::V2 { .. } | Behaviour::Resumable { .. } | Behaviour::RefusePost(..),
            &Method::HEAD,
            "/v2/record",
        ) => empty(StatusCode::OK),
        (Behaviour::V2 { auto_ack }, &Method::POST, "/v2/record") => {
            let acks = if auto_ack { Acks::Every } else { Acks::Manual };
            v2_session(&shared, req, acks, None)
        }
        (Behaviour::Resumable { acks, offer }, &Method::POST, "/v2/record") => {
            v2_session(&shared, req, acks, Some(offer))
        }
        (Behaviour::RefusePost(status, reason), &Method::POST, "/v2/record") => {
            shared
                .requests
                .lock()
                .unwrap()
                .push(seen(req.headers(), None));
            let mut r = Response::new(Full::new(Bytes::from(format!("{reason}\n"))).boxed());
            *r.status_mut() = status;
            r
        }
        _ => empty(StatusCode::NOT_FOUND),
    })
}

fn seen(headers: &HeaderMap, offered: Option<u64>) -> SeenRequest {
    let text = |name| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    SeenRequest {
        session: text(SESSION_HEADER),
        resume: text(RESUME_HEADER),
        offered,
    }
}

/// The offset a resumable fake answers (`None`: no header).
fn offered(headers: &HeaderMap, offer: Option<Offer>) -> Option<u64> {
    match offer? {
        Offer::Echo => Some(
            headers
                .get(RESUME_HEADER)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0),
        ),
        Offer::Fixed(n) => Some(n),
        Offer::Missing => None,
    }
}

/// Answers 200 at once with a streamed ack body; a task reads the request body. With an
/// offer, acks are absolute: the body starts at the offered offset.
fn v2_session(shared: &Shared, req: Request<Incoming>, acks: Acks, offer: Option<Offer>) -> Resp {
    let offset = offered(req.headers(), offer);
    shared
        .requests
        .lock()
        .unwrap()
        .push(seen(req.headers(), offset));
    let (tx, rx) = mpsc::channel::<Bytes>(INJECT_QUEUE);
    // Weak: the response ends when the session task drops its sender.
    shared.inject.send_replace(Some(tx.downgrade()));
    let received = shared.received.clone();
    let base = offset.unwrap_or(0);
    tokio::spawn(async move {
        let ack = |n: u64| Bytes::from(format!("{{\"ack\":{}}}\n", base + n));
        let mut body = req.into_body();
        let mut count = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                count += data.len() as u64;
                received.lock().unwrap().extend_from_slice(&data);
                let now = match acks {
                    Acks::Every => Some(count),
                    Acks::Half => Some(count / 2),
                    Acks::Manual => None,
                };
                if let Some(n) = now {
                    let _ = tx.send(ack(n)).await;
                }
            }
        }
        if acks != Acks::Manual {
            let _ = tx.send(ack(count)).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    if let Some(n) = offset {
        resp.headers_mut().insert(RESUME_OFFSET_HEADER, n.into());
    }
    resp
}
