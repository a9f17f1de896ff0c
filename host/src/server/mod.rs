//! The tokio shell: accepts TCP (or TLS) connections and runs one task per
//! connection, each driving the sans-IO protocol and feeding the plugin.

mod connection;
mod endpoints;
pub mod outbound;
pub mod pem_key;
pub mod per_ip;
pub mod registry;
pub mod route_path;
pub mod static_files;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Refused;
use crate::metrics::{ClusterCounts, Metrics, Rejected, RouteMetrics};
use crate::plugin::PluginHandle;
use crate::ws::handshake::HandshakeConfig;
use per_ip::{Admission, PerIp, PerIpLimits};
use registry::Registry;
use route_path::RoutePath;
use static_files::StaticFiles;

/// Settings of every connection, whatever its route.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The opening handshake (and TLS handshake) must complete within this time.
    pub handshake_timeout: Duration,
    /// Silence before a ping, and then the time to answer it.
    pub idle_timeout: Duration,
    /// How long to wait for the peer's close frame, and to flush ours.
    pub close_timeout: Duration,
    /// Open WebSocket connections of the host at most; handshakes past it get 503.
    pub max_connections: usize,
    /// Production mode: HTTP error bodies carry no detail.
    pub prod: bool,
    /// Serve `/metrics` on the WebSocket port (only when asked to: it is open to every
    /// client that reaches the port).
    pub metrics_here: bool,
    /// Connections the kernel may hold for the server to accept; `None`: the system's
    /// most (`net.core.somaxconn`).
    pub backlog: Option<u32>,
    /// Bounds per client address.
    pub per_ip: PerIpLimits,
    /// How long a graceful shutdown waits for connections to close.
    pub shutdown_grace: Duration,
}

impl Default for Settings {
    /// The original library's timeout (5 s) for each step, 10,000 connections, production
    /// mode, no bound per address.
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            prod: true,
            metrics_here: false,
            backlog: None,
            per_ip: PerIpLimits::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A route's largest message unless configured (the original library's `maxPayloadSize`).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 512 << 10;

/// A plugin and the paths it serves: its own connections, groups, limits and metrics.
pub struct Route {
    /// The paths it serves.
    pub path: RoutePath,
    /// How its handshakes are answered.
    pub handshake: HandshakeConfig,
    /// Largest message accepted, after reassembly and inflation (1009 beyond).
    pub max_message_size: usize,
    /// Its own bound of open connections, if it has one.
    pub max_connections: Option<usize>,
    /// Its connections: what its plugin reaches.
    pub registry: Arc<Registry>,
    /// Its plugin.
    pub plugin: PluginHandle,
    /// Its metrics.
    pub metrics: RouteMetrics,
    /// Its connections open or being opened, against `max_connections`.
    open: AtomicUsize,
}

impl Route {
    /// A route of `plugin`, whose connections are in `registry`.
    pub fn new(
        path: RoutePath,
        handshake: HandshakeConfig,
        max_message_size: usize,
        max_connections: Option<usize>,
        registry: Arc<Registry>,
        plugin: PluginHandle,
        metrics: RouteMetrics,
    ) -> Self {
        Self {
            path,
            handshake,
            max_message_size,
            max_connections,
            registry,
            plugin,
            metrics,
            open: AtomicUsize::new(0),
        }
    }

    /// Its name, as metrics and logs show it.
    pub fn name(&self) -> &str {
        self.metrics.route()
    }
}

/// The route that serves `path`: an exact path before any prefix, a longer prefix
/// before a shorter one.
fn route_of<'r>(routes: &'r [Route], path: &str) -> Option<&'r Route> {
    routes
        .iter()
        .filter_map(|route| Some((route.path.rank(path)?, route)))
        .max_by_key(|(rank, _)| *rank)
        .map(|(_, route)| route)
}

/// What every connection task shares.
pub struct Shared {
    settings: Settings,
    routes: Vec<Route>,
    static_files: Option<StaticFiles>,
    metrics: Arc<Metrics>,
    /// Cancelled when the server shuts down: handshakes are refused from then on.
    shutdown: CancellationToken,
    /// Listening, and not shutting down: `/readyz` says 200.
    ready: AtomicBool,
    /// WebSocket connections open or being opened, against `max_connections`.
    open: AtomicUsize,
    /// Connections per client address.
    per_ip: Arc<PerIp>,
}

impl Shared {
    /// Starts the shutdown: handshakes are refused from now on, and every open
    /// connection (and any that registers later) closes with 1001.
    fn shut_down(&self) {
        self.shutdown.cancel();
        for route in &self.routes {
            route.registry.shut_down();
        }
    }

    /// The metrics, with the gauges read from the routes as they are now.
    fn scrape(&self) -> String {
        for route in &self.routes {
            route.metrics.connections.set(route.registry.len() as i64);
            route.metrics.plugin_queue.set(route.plugin.queued() as i64);
            if let Some(cluster) = route.registry.cluster() {
                let counts = ClusterCounts {
                    peers: cluster.peers(),
                    unsent: cluster.unsent(),
                    unreceived: cluster.unreceived(),
                    refused: Refused::all()
                        .map(|why| (why.label(), cluster.losses().refused(why)))
                        .collect(),
                };
                self.metrics.cluster(route.name(), &counts);
            }
        }
        self.metrics.render()
    }
}

/// A bound, not yet running, server.
pub struct Server {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds the listening socket, and the metrics' own if `metrics_listen` is given.
    pub async fn bind(
        addr: SocketAddr,
        metrics_listen: Option<SocketAddr>,
        settings: Settings,
        routes: Vec<Route>,
        metrics: Arc<Metrics>,
        static_files: Option<StaticFiles>,
        tls: Option<TlsAcceptor>,
    ) -> std::io::Result<Self> {
        let listener = listen(addr, settings.backlog.unwrap_or_else(system_backlog))?;
        let metrics_listener = match metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let per_ip = PerIp::new(settings.per_ip);
        for route in &routes {
            route.registry.hold_overruns_in(per_ip.clone());
        }
        let shared = Arc::new(Shared {
            settings,
            routes,
            static_files,
            metrics,
            shutdown: CancellationToken::new(),
            ready: AtomicBool::new(false),
            open: Default::default(),
            per_ip,
        });
        Ok(Self {
            listener,
            metrics_listener,
            tls,
            shared,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The metrics' own address, if they have one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Accepts connections until `stop` resolves, then shuts down gracefully: `/readyz`
    /// turns 503 and new upgrades get 503, every connection gets close 1001, and the
    /// server waits up to [`Settings::shutdown_grace`] for them to close and for every plugin
    /// to handle every `on-close`. It keeps answering plain HTTP (health, metrics, files) meanwhile, so
    /// that a load balancer sees it leave.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let grace = self.shared.settings.shutdown_grace;
        let tasks = TaskTracker::new();
        if let Some(listener) = self.metrics_listener {
            tokio::spawn(endpoints::serve_metrics(listener, self.shared.clone()));
        }
        self.shared.ready.store(true, Ordering::Release);
        let accept_loop = async {
            loop {
                match self.listener.accept().await {
                    Ok((stream, peer)) => match self.shared.per_ip.admit(peer.ip(), std::time::Instant::now()) {
                        Ok(admission) => {
                            tasks.spawn(accept(stream, peer, self.tls.clone(), self.shared.clone(), admission));
                        }
                        Err(refusal) => {
                            tasks.spawn(refuse_per_ip(
                                stream,
                                peer,
                                refusal,
                                self.tls.is_none(),
                                self.shared.clone(),
                            ));
                        }
                    },
                    Err(error) => {
                        // Typically EMFILE: back off briefly instead of spinning.
                        tracing::warn!("accept failed: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        tokio::pin!(accept_loop);
        tokio::select! {
            () = &mut accept_loop => {}
            () = stop => {}
        }
        self.shared.ready.store(false, Ordering::Release);
        let open: usize = self.shared.routes.iter().map(|r| r.registry.len()).sum();
        tracing::info!(
            connections = open,
            grace_s = grace.as_secs(),
            "shutting down: closing connections"
        );
        self.shared.shut_down();
        let drained = async {
            // Handshakes accepted from now on are refused (503), so the tasks run out.
            tasks.close();
            tasks.wait().await;
            // Every task has queued its `on-close`; wait until the plugins handled them.
            for route in &self.shared.routes {
                route.plugin.barrier().await;
            }
        };
        let drained = tokio::time::timeout(grace, drained);
        tokio::pin!(drained);
        let outcome = tokio::select! {
            outcome = &mut drained => outcome,
            () = &mut accept_loop => unreachable!("the accept loop never ends"),
        };
        match outcome {
            Ok(()) => tracing::info!("shut down cleanly"),
            Err(_) => tracing::warn!(
                connections = self.shared.routes.iter().map(|r| r.registry.len()).sum::<usize>(),
                "shutdown grace period over: dropping the remaining connections"
            ),
        }
    }
}

/// A listening socket on `addr` whose accept queue holds `backlog` connections.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted server need not wait out TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The largest accept queue the system allows (`net.core.somaxconn`), which the kernel
/// would cut a larger backlog down to anyway; 4096 (Linux's default since 5.4) if it
/// cannot be read.
pub fn system_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(4096)
}

/// Turns away a connection whose address is over a bound: a 429 on a plain socket (its
/// request unread: the answer does not depend on it), nothing on a TLS one.
async fn refuse_per_ip(
    mut stream: TcpStream,
    peer: SocketAddr,
    refusal: per_ip::Refusal,
    plain: bool,
    shared: Arc<Shared>,
) {
    shared.metrics.rejected(Rejected::PerIp);
    tracing::debug!(%peer, ?refusal, "connection refused: over the per-address bound");
    if plain {
        let retry_after = refusal.retry_after_s().to_string();
        let response = crate::http::text(429, &[("Retry-After", retry_after.as_str())], crate::http::phrase(429));
        // Then a moment for the client to send its request and read the answer: closing
        // with its request unread would reset the connection, the answer with it.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(&response).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            std::io::Result::Ok(())
        })
        .await;
    }
}

/// Sets up one accepted socket (TLS handshake if configured) and serves it, counted
/// against its address until it closes.
async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    admission: Admission,
) {
    let _admission = admission;
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            // Owned halves of a TcpStream need no lock between reading and writing.
            let (reader, writer) = stream.into_split();
            connection::serve(reader, writer, peer, shared).await;
        }
        // On the heap: inline, the TLS handshake and a TLS connection's larger state
        // would make every plain connection's task 1.4 KiB larger too (3,768 bytes
        // against 2,344), all its life.
        Some(acceptor) => Box::pin(accept_tls(stream, peer, acceptor, shared)).await,
    }
}

/// Completes the TLS handshake within the handshake timeout, then serves the connection.
async fn accept_tls(stream: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    match tokio::time::timeout(shared.settings.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let (reader, writer) = tokio::io::split(stream);
            connection::serve(reader, writer, peer, shared).await;
        }
        Ok(Err(error)) => {
            shared.metrics.rejected(Rejected::Tls);
            tracing::debug!(%peer, "TLS handshake failed: {error}");
        }
        Err(_) => {
            shared.metrics.rejected(Rejected::Tls);
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}
