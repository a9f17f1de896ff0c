//! The operator's HTTP endpoints: `/healthz` (the process serves), `/readyz` (it
//! listens, its plugins are loaded, and it is not shutting down) and `/metrics`
//! (Prometheus), on the WebSocket port or on an address of their own.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::Shared;
use crate::http;
use crate::metrics::CONTENT_TYPE;
use crate::ws::handshake::{self, HandshakeConfig, Outcome};

/// The response to a plain `GET` or `HEAD` of one of the endpoints, or `None` if
/// `path` is not one (of those served here: `/metrics` only where `metrics` is true).
pub fn respond(method: &str, path: &str, shared: &Shared, metrics: bool) -> Option<Vec<u8>> {
    if method != "GET" && method != "HEAD" {
        return None;
    }
    let (status, content_type, body) = match path {
        "/healthz" => (200, "text/plain; charset=utf-8", "ok\n".to_owned()),
        "/readyz" if shared.ready.load(Ordering::Acquire) => (200, "text/plain; charset=utf-8", "ready\n".to_owned()),
        "/readyz" => (
            503,
            "text/plain; charset=utf-8",
            "not ready: shutting down\n".to_owned(),
        ),
        "/metrics" if metrics => (200, CONTENT_TYPE, shared.scrape()),
        _ => return None,
    };
    let headers = [("Cache-Control", "no-store")];
    let response = http::response(status, &headers, content_type, body.as_bytes(), method == "GET");
    Some(response)
}

/// Answers the endpoints on their own listener: every request on a connection of its
/// own (`Connection: close`), 404 for anything else.
pub async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, shared.clone()));
            }
            Err(error) => {
                tracing::warn!("metrics listener: accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, shared: Arc<Shared>) {
    let config = HandshakeConfig::default();
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            match handshake::accept(&buf, &config) {
                Outcome::Incomplete => {}
                outcome => return Some(outcome),
            }
            buf.reserve(1024);
            if stream.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
    };
    let Ok(Some(outcome)) = timeout(shared.settings.handshake_timeout, read).await else {
        return;
    };
    let found = match &outcome {
        Outcome::Plain { request, .. } => respond(&request.method, &request.path, &shared, true),
        Outcome::Accepted { accepted, .. } => respond(&accepted.request.method, &accepted.request.path, &shared, true),
        _ => None,
    };
    let response = found.unwrap_or_else(|| http::text(404, &[], "Not Found"));
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}
