//! A reference WebSocket server built with fastwebsockets, for the benchmarks only.
//!
//! It is written the way fastwebsockets' own examples (`echo_server.rs`,
//! `echo_server_split.rs`) recommend: hyper 1 serves HTTP/1.1, `upgrade::upgrade`
//! answers the handshake, automatic close and pong are on, and a fragment
//! collector hands over whole messages. No permessage-deflate (fastwebsockets has none).
//!
//! ```text
//! ref-fastwebsockets --listen 127.0.0.1:0 --mode echo|broadcast
//! ```
//!
//! Once bound it prints one line, `listening on ws://ADDR`, on stdout.
//! - `echo`: every message goes back to its sender, text as text, binary as binary.
//! - `broadcast`: every message goes, byte for byte and with its opcode, to every
//!   other open connection, never back to its sender.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use fastwebsockets::upgrade::{self, UpgradeFut};
use fastwebsockets::{FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Command line.
#[derive(Parser)]
#[command(about = "fastwebsockets reference server (benchmarks only)")]
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

/// A frame's opcode and payload, owned and cheap to clone, waiting in a connection's queue.
///
/// A fastwebsockets [`Frame`] is consumed by the write, so each connection frames
/// its own copy of the (shared) payload.
#[derive(Debug)]
struct Outgoing {
    opcode: OpCode,
    payload: Bytes,
}

impl From<Frame<'_>> for Outgoing {
    fn from(frame: Frame<'_>) -> Self {
        let payload = match frame.payload {
            // An unfragmented message: the read buffer's bytes, without a copy.
            Payload::Bytes(bytes) => bytes.freeze(),
            other => Vec::from(other).into(),
        };
        Self {
            opcode: frame.opcode,
            payload,
        }
    }
}

/// The queue of every open connection, in broadcast mode.
#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    queues: Mutex<HashMap<u64, mpsc::UnboundedSender<Outgoing>>>,
}

impl Registry {
    /// Adds a connection's queue and returns the connection's id.
    fn register(&self, queue: mpsc::UnboundedSender<Outgoing>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.queues.lock().unwrap().insert(id, queue);
        id
    }

    fn unregister(&self, id: u64) {
        self.queues.lock().unwrap().remove(&id);
    }

    /// Queues a message to every connection but `from`.
    fn relay(&self, from: u64, opcode: OpCode, payload: Bytes) {
        for (_, queue) in self.queues.lock().unwrap().iter().filter(|(id, _)| **id != from) {
            let _ = queue.send(Outgoing {
                opcode,
                payload: payload.clone(),
            });
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
            let service = service_fn(move |request| server_upgrade(request, mode, registry.clone()));
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(error) = connection.await {
                eprintln!("HTTP connection failed: {error}");
            }
        });
    }
}

/// Answers the opening handshake and spawns the task that serves the WebSocket.
async fn server_upgrade(
    mut request: Request<Incoming>,
    mode: Mode,
    registry: Arc<Registry>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, upgraded) = upgrade::upgrade(&mut request)?;
    tokio::spawn(async move {
        let served = match mode {
            // As in echo_server.rs: without cooperative budgeting.
            Mode::Echo => tokio::task::unconstrained(echo(upgraded)).await,
            Mode::Broadcast => broadcast(upgraded, &registry).await,
        };
        if let Err(error) = served {
            eprintln!("WebSocket connection failed: {error}");
        }
    });
    Ok(response)
}

/// Echoes every message to its sender, as fastwebsockets' `echo_server.rs` does.
async fn echo(upgraded: UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = upgraded.await?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

/// Relays every message to every other connection and writes what the others relay.
///
/// `read_frame` is not cancel-safe (a partly read frame would be lost), so the
/// socket is split as in `echo_server_split.rs`: the read half relays, the write
/// half drains this connection's queue, which also carries the pongs and the
/// close reply that the read half owes the peer.
async fn broadcast(upgraded: UpgradeFut, registry: &Registry) -> Result<(), WebSocketError> {
    let mut ws = upgraded.await?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let (read_half, mut write_half) = ws.split(tokio::io::split);
    let mut reader = FragmentCollectorRead::new(read_half);
    let (queue, mut queued) = mpsc::unbounded_channel::<Outgoing>();
    let id = registry.register(queue.clone());

    let read = async move {
        let mut owed = |frame: Frame<'_>| std::future::ready(queue.send(frame.into()));
        let result = loop {
            match reader.read_frame(&mut owed).await {
                Ok(frame) if frame.opcode == OpCode::Close => break Ok(()),
                Ok(frame) if matches!(frame.opcode, OpCode::Text | OpCode::Binary) => {
                    let Outgoing { opcode, payload } = frame.into();
                    registry.relay(id, opcode, payload);
                }
                Ok(_) => {}
                Err(error) => break Err(error),
            }
        };
        // Once no sender is left, the write half ends after what is queued.
        registry.unregister(id);
        result
    };
    let write = async move {
        while let Some(Outgoing { opcode, payload }) = queued.recv().await {
            let frame = Frame::new(true, opcode, None, Payload::Borrowed(&payload));
            write_half.write_frame(frame).await?;
            if opcode == OpCode::Close {
                break;
            }
        }
        Ok(())
    };
    let (read, write) = tokio::join!(read, write);
    read.and(write)
}
