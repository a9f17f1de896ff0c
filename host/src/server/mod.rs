//! The tokio shell: accepts TCP (or TLS) connections and runs one task per
//! connection, each driving the sans-IO protocol and feeding the plugin.

mod connection;
pub mod outbound;
pub mod registry;
pub mod static_files;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::plugin::{PluginEvent, PluginHandle};
use crate::ws::handshake::HandshakeConfig;
use registry::Registry;
use static_files::StaticFiles;

/// Settings of every connection.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How handshakes are answered.
    pub handshake: HandshakeConfig,
    /// The opening handshake (and TLS handshake) must complete within this time.
    pub handshake_timeout: Duration,
    /// Silence before a ping, and then the time to answer it.
    pub idle_timeout: Duration,
    /// How long to wait for the peer's close frame, and to flush ours.
    pub close_timeout: Duration,
    /// Largest message accepted, after reassembly and inflation (1009 beyond).
    pub max_message_size: usize,
    /// Open WebSocket connections at most; handshakes past it get 503.
    pub max_connections: usize,
    /// Production mode: HTTP error bodies carry no detail.
    pub prod: bool,
}

/// What every connection task shares.
pub struct Shared {
    settings: Settings,
    registry: Arc<Registry>,
    plugin: PluginHandle,
    static_files: Option<StaticFiles>,
    /// Cancelled when the server shuts down: connections close with 1001.
    shutdown: CancellationToken,
    /// WebSocket connections open or being opened, against `max_connections`.
    open: std::sync::atomic::AtomicUsize,
}

/// A bound, not yet running, server.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds the listening socket.
    pub async fn bind(
        addr: SocketAddr,
        settings: Settings,
        registry: Arc<Registry>,
        plugin: PluginHandle,
        static_files: Option<StaticFiles>,
        tls: Option<TlsAcceptor>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            settings,
            registry,
            plugin,
            static_files,
            shutdown,
            open: Default::default(),
        });
        Ok(Self { listener, tls, shared })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `stop` resolves, then shuts down gracefully: stops
    /// accepting, sends close 1001 to every connection, and waits up to `grace` for
    /// them to close and for the plugin to handle every `on-close`.
    pub async fn run(self, stop: impl Future<Output = ()>, grace: Duration) {
        let tasks = TaskTracker::new();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        tasks.spawn(accept(stream, peer, self.tls.clone(), self.shared.clone()));
                    }
                    Err(error) => {
                        // Typically EMFILE: back off briefly instead of spinning.
                        tracing::warn!("accept failed: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = &mut stop => break,
            }
        }
        drop(self.listener);
        let open = self.shared.registry.len();
        tracing::info!(
            connections = open,
            grace_s = grace.as_secs(),
            "shutting down: closing connections"
        );
        self.shared.shutdown.cancel();
        tasks.close();
        let drained = async {
            tasks.wait().await;
            // Every task has queued its `on-close`; wait until the plugin handled them.
            let (done, handled) = oneshot::channel();
            if self
                .shared
                .plugin
                .events()
                .send(PluginEvent::Barrier(0, done))
                .await
                .is_ok()
            {
                let _ = handled.await;
            }
        };
        match tokio::time::timeout(grace, drained).await {
            Ok(()) => tracing::info!("shut down cleanly"),
            Err(_) => tracing::warn!(
                connections = self.shared.registry.len(),
                "shutdown grace period over: dropping the remaining connections"
            ),
        }
    }
}

/// Sets up one accepted socket (TLS handshake if configured) and serves it.
async fn accept(stream: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            // Owned halves of a TcpStream need no lock between reading and writing.
            let (reader, writer) = stream.into_split();
            connection::serve(reader, writer, peer, shared).await;
        }
        Some(acceptor) => {
            match tokio::time::timeout(shared.settings.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let (reader, writer) = tokio::io::split(stream);
                    connection::serve(reader, writer, peer, shared).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, "TLS handshake failed: {error}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}
