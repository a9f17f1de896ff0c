//! The tokio shell: accepts TCP connections and runs one task per connection,
//! each driving the sans-IO protocol and feeding the plugin.

mod connection;
pub mod registry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::plugin::PluginHandle;
use crate::ws::handshake::HandshakeConfig;
use registry::Registry;

pub use connection::OVERFLOW_CLOSE_CODE;

/// Settings of every connection.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How handshakes are answered.
    pub handshake: HandshakeConfig,
    /// The opening handshake must complete within this time.
    pub handshake_timeout: Duration,
    /// How long to wait for the peer's close frame, and to flush ours.
    pub close_timeout: Duration,
    /// Largest message accepted, after reassembly and inflation (1009 beyond).
    pub max_message_size: usize,
    /// zlib level for compressed messages.
    pub deflate_level: u32,
}

/// What every connection task shares.
pub struct Shared {
    settings: Settings,
    registry: Arc<Registry>,
    plugin: PluginHandle,
}

/// A bound, not yet running, server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds the listening socket.
    pub async fn bind(
        addr: SocketAddr,
        settings: Settings,
        registry: Arc<Registry>,
        plugin: PluginHandle,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                settings,
                registry,
                plugin,
            }),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections forever.
    pub async fn run(self) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection::serve(stream, peer, self.shared.clone()));
                }
                Err(error) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
