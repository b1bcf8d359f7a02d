//! Ingest: the HTTP face of a node.
//!
//! Owns the listener (HTTP/1.1 and h2c prior knowledge on one port), the recorder wire
//! protocol ([`record`]: `/record`, `/v2/record`; [`events`]: `/v2/event`), the operator
//! API ([`api`]: `/healthz`, `/metrics`, `/api/v1/sessions`) and naming the connecting
//! SSH server ([`identity`]). It turns requests into byte streams for the session layer
//! and durable offsets into ack frames; it never touches files or decides durability.

pub mod api;
pub mod cluster_api;
pub mod events;
pub mod identity;
pub mod record;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use self::identity::Identity;
use crate::session::SessionManager;

/// How long in-flight connections get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything a handler needs; cloned per request.
#[derive(Clone)]
pub struct AppState {
    pub sessions: Arc<SessionManager>,
    pub identity: Arc<Identity>,
    /// Renders `/metrics`; `None` when no recorder is installed (some tests).
    pub metrics: Option<PrometheusHandle>,
    /// Shown by `/healthz`.
    pub hostname: Arc<str>,
    /// Session tasks run here so that shutdown can wait for them to mark their sessions.
    pub tracker: TaskTracker,
    /// This node's place in a recorder set; `None` when standalone.
    pub cluster: Option<Arc<crate::cluster::member::Member>>,
}

/// The routes of a recorder node.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/record", post(record::record_v1))
        .route("/v2/record", post(record::record_v2).head(record::probe))
        .route("/v2/event", post(events::post_event).head(record::probe))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(api::metrics))
        .route("/api/v1/sessions", get(api::sessions))
        .route("/api/v1/cluster/status", get(cluster_api::status))
        .route("/api/v1/cluster/sessions", get(cluster_api::sessions))
        .route("/api/v1/cluster/learners", post(cluster_api::add_learner))
        .route("/api/v1/cluster/promote", post(cluster_api::promote))
        .route("/api/v1/cluster/remove", post(cluster_api::remove))
        .route(
            "/api/v1/cluster/settings",
            get(cluster_api::settings).post(cluster_api::set_settings),
        )
        // Recording bodies are streams that last as long as a session; events set their
        // own limit.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown`, then lets connections finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = connection_builder();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Ack frames are small and latency-sensitive.
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn({
            let app = app.clone();
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(request)
            }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tracker.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("connections still open after the shutdown grace"),
    }
}

/// HTTP/1.1 + h2c (prior knowledge) on one port, tuned for long uploads.
fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    builder
        .http2()
        .timer(TokioTimer::new())
        // Bulk uploads: bigger windows and frames mean fewer round trips and wakeups.
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .max_frame_size(64 * 1024)
        .max_concurrent_streams(1024)
        // Find dead peers on idle sessions; the recorder's ack frames keep live ones busy.
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// The peer address a handler sees (inserted by [`serve`]).
pub type Peer = ConnectInfo<SocketAddr>;
