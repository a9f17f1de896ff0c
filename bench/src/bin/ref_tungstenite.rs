//! A reference WebSocket server built with tokio-tungstenite, for the benchmarks only.
//!
//! It is written the way tokio-tungstenite's examples (`echo-server.rs`, `server.rs`)
//! recommend, with its default settings: `accept_async`, `StreamExt::split`, and
//! messages forwarded from stream to sink. No permessage-deflate (tungstenite has none).
//!
//! ```text
//! ref-tungstenite --listen 127.0.0.1:0 --mode echo|broadcast
//! ```
//!
//! Once bound it prints one line, `listening on ws://ADDR`, on stdout.
//! - `echo`: every message goes back to its sender, text as text, binary as binary.
//! - `broadcast`: every message goes, byte for byte and with its type, to every
//!   other open connection, never back to its sender.

use std::collections::HashMap;
use std::io::Write;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use futures_util::{StreamExt, TryStreamExt, future, stream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error, Message};

/// Command line.
#[derive(Parser)]
#[command(about = "tokio-tungstenite reference server (benchmarks only)")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: String,
    /// What the server does with each message.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    mode: Mode,
}

/// What the server does with each message.
#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Back to its sender.
    Echo,
    /// To every other open connection.
    Broadcast,
}

/// The queue of every open connection, in broadcast mode.
#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    queues: Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>,
}

impl Registry {
    /// Adds a connection's queue and returns the connection's id.
    fn register(&self, queue: mpsc::UnboundedSender<Message>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.queues.lock().unwrap().insert(id, queue);
        id
    }

    fn unregister(&self, id: u64) {
        self.queues.lock().unwrap().remove(&id);
    }

    /// Queues a message to every connection but `from`. Cloning a message shares its payload.
    fn relay(&self, from: u64, message: &Message) {
        for (_, queue) in self.queues.lock().unwrap().iter().filter(|(id, _)| **id != from) {
            let _ = queue.send(message.clone());
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("listening on ws://{}", listener.local_addr()?);
    std::io::stdout().flush()?;

    let registry = Arc::new(Registry::default());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Typically EMFILE: back off briefly instead of spinning (as the host does).
                eprintln!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // As the host and Node's ws do.
        let _ = stream.set_nodelay(true);
        let (mode, registry) = (args.mode, registry.clone());
        tokio::spawn(async move {
            let served = match mode {
                Mode::Echo => echo(stream).await,
                Mode::Broadcast => broadcast(stream, &registry).await,
            };
            if let Err(error) = served {
                eprintln!("WebSocket connection failed: {error}");
            }
        });
    }
}

/// Echoes every message to its sender, as tokio-tungstenite's `echo-server.rs` does.
async fn echo(stream: TcpStream) -> Result<(), Error> {
    let (write, read) = tokio_tungstenite::accept_async(stream).await?.split();
    // Pings, pongs and the close reply are tungstenite's business, not echoed.
    read.try_filter(|message| future::ready(message.is_text() || message.is_binary()))
        .forward(write)
        .await
}

/// Relays every message to every other connection and writes what the others
/// relay, as tokio-tungstenite's `server.rs` does.
async fn broadcast(stream: TcpStream, registry: &Registry) -> Result<(), Error> {
    let (write, read) = tokio_tungstenite::accept_async(stream).await?.split();
    let (queue, mut queued) = mpsc::unbounded_channel();
    let id = registry.register(queue);

    let relay = read.try_for_each(|message| {
        if message.is_text() || message.is_binary() {
            registry.relay(id, &message);
        }
        future::ok(())
    });
    let deliver = stream::poll_fn(|cx| queued.poll_recv(cx)).map(Ok).forward(write);
    // The read half ends after tungstenite has answered the peer's close.
    let result = match future::select(pin!(relay), pin!(deliver)).await {
        future::Either::Left((result, _)) | future::Either::Right((result, _)) => result,
    };
    registry.unregister(id);
    result
}
