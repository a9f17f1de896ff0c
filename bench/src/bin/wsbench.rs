//! `wsbench`: a WebSocket load generator. Modes:
//! - `echo`: N connections each keep D messages of S bytes in flight for T seconds;
//!   every echo is checked byte for byte; prints msgs/s and latency percentiles.
//! - `fanout`: N connections in a room (a server that relays each message to every
//!   other connection); K of them send; every message must reach every other
//!   connection; prints deliveries/s, delivery latency and lost messages.
//! - `conns`: opens N idle connections, holds them, and reads the server's RSS.
//!
//! With `--attackers N`, N more connections attack meanwhile: each sends
//! `--attack-message` to `--attack-path`, waits for the server to answer or close it,
//! and starts again on a new connection; how many attacks ended is reported.
//!
//! The last line of output is `RESULT {json}` for scripts. CPU time of wsbench and
//! of the server (`--server-pid`) is reported, to show which one was the bottleneck.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Args, Parser, Subcommand};
use tokio::sync::Notify;
use wsplug_bench::client::{Client, Target, insecure_tls};
use wsplug_bench::stats::{cpu_seconds, latency_histogram, percentiles, rss_kib};

#[derive(Parser)]
#[command(name = "wsbench", about = "WebSocket load generator")]
struct Cli {
    /// Server address, host:port; several, comma-separated (the hosts of a cluster):
    /// connection i goes to the (i mod n)-th, so the first connections, the fanout's
    /// senders, are on the first host.
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: String,
    /// Request path; `{n}` in it becomes the connection's number (a chat's
    /// `/?name=u{n}`, whose names must differ).
    #[arg(long, default_value = "/")]
    path: String,
    /// Offer permessage-deflate and compress sent messages.
    #[arg(long)]
    deflate: bool,
    /// Connect with TLS (any certificate is accepted).
    #[arg(long)]
    tls: bool,
    /// PID of the server, to report its CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Worker threads of wsbench itself.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Connections attacking while the load runs (see `--attack-path`).
    #[arg(long, default_value_t = 0)]
    attackers: usize,
    /// Request path the attackers connect to.
    #[arg(long, default_value = "/attack")]
    attack_path: String,
    /// What each attacker sends, as one text message, before it waits to be answered
    /// or closed.
    #[arg(long, default_value = "spin")]
    attack_message: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Echo load.
    Echo {
        #[arg(long, default_value_t = 100)]
        conns: usize,
        /// Message size in bytes.
        #[arg(long, default_value_t = 20)]
        size: usize,
        /// Messages in flight per connection.
        #[arg(long, default_value_t = 1)]
        inflight: usize,
        /// Seconds of measurement.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
    /// Broadcast load.
    Fanout(Fanout),
    /// Idle connections.
    Conns {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Handshakes in progress at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Many connections need many file descriptors.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads)
        .enable_all()
        .build()?;
    let tls = cli.tls.then(insecure_tls);
    let targets: Vec<Target> = cli
        .addr
        .split(',')
        .map(|addr| Target {
            addr: addr.to_owned(),
            path: cli.path.clone(),
            deflate: cli.deflate,
            tls: tls.clone(),
        })
        .collect();
    let target = &targets[..];
    let own_pid = std::process::id();
    let cpu_before = (cpu_seconds(own_pid), cli.server_pid.and_then(cpu_seconds));
    let attack_target = Target {
        path: cli.attack_path.clone(),
        ..targets[0].clone()
    };
    let mut result = runtime.block_on(async {
        let attack = Attack::start(attack_target, cli.attackers, cli.attack_message.clone());
        let mut result = match cli.mode {
            Mode::Echo {
                conns,
                size,
                inflight,
                duration,
            } => echo(target, conns, size, inflight, duration).await,
            Mode::Fanout(shape) => fanout(target, shape).await,
            Mode::Conns { conns, concurrency } => idle(target, conns, concurrency, cli.server_pid).await,
        }?;
        if cli.attackers > 0 {
            result.push(("attacks", attack.stop().to_string()));
        }
        anyhow::Ok(result)
    })?;
    let cpu_after = (cpu_seconds(own_pid), cli.server_pid.and_then(cpu_seconds));
    if let (Some(a), Some(b)) = (cpu_before.0, cpu_after.0) {
        result.push(("client_cpu_s", format!("{:.2}", b - a)));
    }
    if let (Some(a), Some(b)) = (cpu_before.1, cpu_after.1) {
        result.push(("server_cpu_s", format!("{:.2}", b - a)));
    }
    let human: Vec<String> = result.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("{}", human.join(" "));
    let json: Vec<String> = result.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    println!("RESULT {{{}}}", json.join(","));
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

type Report = Vec<(&'static str, String)>;

/// Text payloads: a window into a repeating alphabet, so each message is checkable
/// from its sequence number alone.
struct Pattern {
    alphabet: Vec<u8>,
    size: usize,
}

impl Pattern {
    fn new(size: usize) -> Self {
        let alphabet = (0..size + 26).map(|i| b'a' + (i % 26) as u8).collect();
        Self { alphabet, size }
    }

    fn message(&self, seq: u64) -> &[u8] {
        let start = (seq % 26) as usize;
        &self.alphabet[start..start + self.size]
    }
}

/// Opens `conns` connections, connection i to `targets[i % targets.len()]`, at most
/// `concurrency` handshakes at a time; returns those that succeeded, in order, and how
/// many failed.
async fn connect_all(targets: &[Target], conns: usize, concurrency: usize) -> (Vec<Client>, usize) {
    let mut clients = Vec::with_capacity(conns);
    let mut failed = 0;
    let mut pending = tokio::task::JoinSet::new();
    let mut launched = 0;
    while launched < conns || !pending.is_empty() {
        while launched < conns && pending.len() < concurrency {
            let mut target = targets[launched % targets.len()].clone();
            target.path = target.path.replace("{n}", &launched.to_string());
            let index = launched;
            pending.spawn(async move { (index, Client::connect(&target).await) });
            launched += 1;
        }
        match pending.join_next().await {
            Some(Ok((index, Ok(client)))) => clients.push((index, client)),
            Some(Ok((_, Err(error)))) => {
                failed += 1;
                eprintln!("wsbench: handshake failed: {error:#}");
            }
            Some(Err(_)) => failed += 1,
            None => break,
        }
    }
    clients.sort_unstable_by_key(|(index, _)| *index);
    (clients.into_iter().map(|(_, client)| client).collect(), failed)
}

/// Opens every connection of a load test, which needs all of them.
async fn connect_every(target: &[Target], conns: usize) -> anyhow::Result<Vec<Client>> {
    let (clients, failed) = connect_all(target, conns, 200).await;
    ensure!(failed == 0, "{failed} of {conns} connections failed");
    Ok(clients)
}

async fn echo(target: &[Target], conns: usize, size: usize, inflight: usize, duration: f64) -> anyhow::Result<Report> {
    let clients = connect_every(target, conns).await?;
    let pattern = Arc::new(Pattern::new(size));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let (pattern, stop) = (pattern.clone(), stop.clone());
        tasks.spawn(async move {
            let mut histogram = latency_histogram();
            let mut sent_at = std::collections::VecDeque::with_capacity(inflight);
            let (mut next_send, mut next_recv) = (0u64, 0u64);
            for _ in 0..inflight {
                client.queue(1, pattern.message(next_send));
                sent_at.push_back(Instant::now());
                next_send += 1;
            }
            client.flush().await?;
            while next_recv < next_send {
                // Handle every echo already read before writing (and waiting) again.
                let frame = match client.parse_data()? {
                    Some(frame) => frame,
                    None => client.next_data().await?,
                };
                ensure!(
                    frame.opcode == 1 && &frame.payload[..] == pattern.message(next_recv),
                    "echo {next_recv} differs from what was sent"
                );
                let sent = sent_at.pop_front().context("an echo nobody asked for")?;
                histogram.record(sent.elapsed().as_micros().max(1) as u64)?;
                next_recv += 1;
                if !stop.load(Ordering::Relaxed) {
                    client.queue(1, pattern.message(next_send));
                    sent_at.push_back(Instant::now());
                    next_send += 1;
                }
            }
            let _ = client.close().await;
            anyhow::Ok(histogram)
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(duration)).await;
    stop.store(true, Ordering::Relaxed);
    let measured = started.elapsed().as_secs_f64();
    let mut total = latency_histogram();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(h) => total.add(&h)?,
            Err(error) => {
                errors += 1;
                eprintln!("wsbench: connection failed: {error:#}");
            }
        }
    }
    let (p50, p99, p999) = percentiles(&total);
    Ok(vec![
        ("mode", "\"echo\"".into()),
        ("conns", conns.to_string()),
        ("size", size.to_string()),
        ("msgs_per_s", format!("{:.0}", total.len() as f64 / measured)),
        ("p50_us", p50.to_string()),
        ("p99_us", p99.to_string()),
        ("p999_us", p999.to_string()),
        ("errors", errors.to_string()),
    ])
}

/// Connections that each send one message and wait for the server to answer or close
/// them, then do it again on a new connection, until stopped.
struct Attack {
    tasks: tokio::task::JoinSet<()>,
    ended: Arc<AtomicU64>,
}

impl Attack {
    /// Starts `attackers` of them against `target`, each sending `message`.
    fn start(target: Target, attackers: usize, message: String) -> Self {
        let ended = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..attackers {
            let (target, message, ended) = (target.clone(), message.clone(), ended.clone());
            tasks.spawn(async move {
                loop {
                    let Ok(mut client) = Client::connect(&target).await else {
                        // Refused (over a bound, say): try again a little later.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    client.queue(1, message.as_bytes());
                    // Answered or closed, either way this attack has ended.
                    let _ = client.next_data().await;
                    ended.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Self { tasks, ended }
    }

    /// Stops the attackers; how many attacks ended.
    fn stop(mut self) -> u64 {
        self.tasks.abort_all();
        self.ended.load(Ordering::Relaxed)
    }
}

/// Nanoseconds since the run started, as embedded in fanout messages.
fn since(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// What a fanout load is made of.
#[derive(Args, Clone, Copy)]
struct Fanout {
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// How many of the connections send.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Message size in bytes (at least 16).
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Messages a sender may have in flight (not yet seen by the last connection).
    #[arg(long, default_value_t = 8)]
    window: u64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Send text (the header in hex, at least 32 bytes), and read it back from the
    /// message itself or from the `text` field of a JSON object whose `type` is
    /// `message` (how the chat relays it); other text is skipped.
    #[arg(long)]
    text: bool,
    /// The last sender is a bystander: one message in flight, its latency reported
    /// on its own (`bystander_p99_us`) while the others send their windows.
    #[arg(long)]
    bystander: bool,
    /// The other senders send their whole window at once, as a burst, and the next
    /// burst only once the last connection has all of it (rather than keeping the
    /// window full).
    #[arg(long)]
    burst: bool,
}

/// The 16-byte header of a text fanout message (32 hex digits), from the message itself
/// or from a chat's JSON `message`; `None` for any other text.
fn text_header(payload: &[u8]) -> Option<[u8; 16]> {
    let text = std::str::from_utf8(payload).ok()?;
    let body = match text.starts_with('{') {
        true if text.contains(r#""type":"message""#) => &text[text.find(r#""text":""#)? + 8..],
        true => return None,
        false => text,
    };
    let hex = body.get(..32)?;
    let mut header = [0u8; 16];
    for (i, byte) in header.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(header)
}

async fn fanout(target: &[Target], shape: Fanout) -> anyhow::Result<Report> {
    let Fanout {
        conns,
        senders,
        size,
        window,
        duration,
        text,
        bystander,
        burst,
    } = shape;
    ensure!(
        conns >= 2 && senders >= 1 && senders < conns,
        "need at least one sender and one receiver"
    );
    ensure!(senders >= 2 || !bystander, "a bystander sends beside another sender");
    ensure!(size >= 16, "fanout messages carry a 16-byte header");
    ensure!(size >= 32 || !text, "text fanout messages carry a 32-digit header");
    // The bystander's deliveries, apart from the others'.
    let bystander_index = bystander.then_some(senders - 1);
    let mut clients = connect_every(target, conns).await?;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // What the last connection (the monitor) has seen of each sender: the window's reference.
    let monitor_seen: Arc<Vec<AtomicU64>> = Arc::new((0..senders).map(|_| AtomicU64::new(0)).collect());
    let progress = Arc::new(Notify::new());
    let sent_counts: Arc<Vec<AtomicU64>> = Arc::new((0..senders).map(|_| AtomicU64::new(0)).collect());

    let mut receivers = tokio::task::JoinSet::new();
    let receiving: Vec<Client> = clients.drain(senders..).collect();
    let monitor_index = receiving.len() - 1;
    let done_sending = Arc::new(AtomicBool::new(false));
    // Told once when sending stops: a receiver that already has everything is waiting
    // for a frame that never comes, and must look again rather than time out.
    let stopped = Arc::new(Notify::new());
    for (index, mut client) in receiving.into_iter().enumerate() {
        let (monitor_seen, progress, sent_counts, done_sending, stopped) = (
            monitor_seen.clone(),
            progress.clone(),
            sent_counts.clone(),
            done_sending.clone(),
            stopped.clone(),
        );
        receivers.spawn(async move {
            let mut histogram = latency_histogram();
            let mut bystander_histogram = latency_histogram();
            let mut expected = vec![0u64; sent_counts.len()];
            let mut received = 0u64;
            let mut lost = 0u64;
            // Registered before the first look at `done_sending`, so the one wake-up
            // cannot be missed.
            let stop_told = stopped.notified();
            tokio::pin!(stop_told);
            stop_told.as_mut().enable();
            let mut told = false;
            loop {
                // Done once sending stopped and everything sent has arrived.
                if done_sending.load(Ordering::Acquire)
                    && expected
                        .iter()
                        .zip(sent_counts.iter())
                        .all(|(e, s)| *e >= s.load(Ordering::Acquire))
                {
                    break;
                }
                // `next_data` is cancel-safe: frames leave the read buffer only in its
                // synchronous parts, reading only appends to it, and `flush` consumes what
                // it wrote.
                let frame = tokio::select! {
                    frame = tokio::time::timeout(Duration::from_secs(3), client.next_data()) => match frame {
                        Ok(frame) => frame?,
                        Err(_) => break, // nothing more is coming: the rest is lost
                    },
                    () = &mut stop_told, if !told => {
                        told = true;
                        continue;
                    }
                };
                let header;
                let p = match frame.opcode {
                    1 => match text_header(&frame.payload) {
                        Some(found) => {
                            header = found;
                            &header[..]
                        }
                        None => continue, // a chat's other news
                    },
                    _ => &frame.payload[..],
                };
                ensure!(p.len() >= 16, "short fanout message");
                let sender = u32::from_le_bytes(p[0..4].try_into()?) as usize;
                let seq = u32::from_le_bytes(p[4..8].try_into()?) as u64;
                let sent_ns = u64::from_le_bytes(p[8..16].try_into()?);
                ensure!(sender < expected.len(), "message from an unknown sender {sender}");
                if seq > expected[sender] {
                    lost += seq - expected[sender];
                }
                expected[sender] = seq + 1;
                received += 1;
                let latency_us = ((since(start).saturating_sub(sent_ns)) / 1000).max(1);
                match Some(sender) == bystander_index {
                    true => bystander_histogram.record(latency_us)?,
                    false => histogram.record(latency_us)?,
                }
                if index == monitor_index {
                    monitor_seen[sender].store(seq + 1, Ordering::Release);
                    progress.notify_waiters();
                }
            }
            let sent: u64 = sent_counts.iter().map(|s| s.load(Ordering::Acquire)).sum();
            let missing = sent.saturating_sub(received);
            let _ = client.close().await;
            anyhow::Ok((histogram, bystander_histogram, received, lost.max(missing)))
        });
    }

    let measure_from = Instant::now();
    let mut sending = tokio::task::JoinSet::new();
    for (sender, mut client) in clients.into_iter().enumerate() {
        let (stop, monitor_seen, progress, sent_counts) = (
            stop.clone(),
            monitor_seen.clone(),
            progress.clone(),
            sent_counts.clone(),
        );
        sending.spawn(async move {
            let mut payload = vec![b'x'; size];
            let mut seq = 0u64;
            let is_bystander = Some(sender) == bystander_index;
            let window = if is_bystander { 1 } else { window };
            // In a burst: what is left of it to send.
            let mut burst_left = 0;
            while !stop.load(Ordering::Relaxed) {
                let notified = progress.notified();
                let seen = monitor_seen[sender].load(Ordering::Acquire);
                let blocked = match burst && !is_bystander {
                    true => {
                        if burst_left == 0 && seq == seen {
                            burst_left = window;
                        }
                        burst_left == 0
                    }
                    false => seq - seen >= window,
                };
                if blocked {
                    // Wait for the monitor, but keep an eye on the clock; meanwhile read
                    // (and drop) what reaches this sender: the other senders' messages, if
                    // the server relays them here, must not back up.
                    tokio::select! {
                        _ = tokio::time::timeout(Duration::from_millis(50), notified) => {}
                        frame = client.next_data() => drop(frame?),
                    }
                    continue;
                }
                let mut header = [0u8; 16];
                header[0..4].copy_from_slice(&(sender as u32).to_le_bytes());
                header[4..8].copy_from_slice(&(seq as u32).to_le_bytes());
                header[8..16].copy_from_slice(&since(start).to_le_bytes());
                match text {
                    true => {
                        for (i, byte) in header.iter().enumerate() {
                            payload[2 * i..2 * i + 2].copy_from_slice(format!("{byte:02x}").as_bytes());
                        }
                        client.queue(1, &payload);
                    }
                    false => {
                        payload[..16].copy_from_slice(&header);
                        client.queue(2, &payload);
                    }
                }
                client.flush().await?;
                seq += 1;
                burst_left = burst_left.saturating_sub(1);
                sent_counts[sender].store(seq, Ordering::Release);
            }
            anyhow::Ok(client)
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut senders_alive = Vec::new();
    while let Some(joined) = sending.join_next().await {
        senders_alive.push(joined??);
    }
    let measured = measure_from.elapsed().as_secs_f64();
    done_sending.store(true, Ordering::Release);
    progress.notify_waiters();
    stopped.notify_waiters();
    let mut total = latency_histogram();
    let mut bystander_total = latency_histogram();
    let (mut delivered, mut lost) = (0u64, 0u64);
    while let Some(joined) = receivers.join_next().await {
        let (h, b, r, l) = joined??;
        total.add(&h)?;
        bystander_total.add(&b)?;
        delivered += r;
        lost += l;
    }
    for mut client in senders_alive {
        let _ = client.close().await;
    }
    let sent: u64 = sent_counts.iter().map(|s| s.load(Ordering::Acquire)).sum();
    let (p50, p99, _) = percentiles(&total);
    Ok(vec![
        ("mode", "\"fanout\"".into()),
        ("conns", conns.to_string()),
        ("senders", senders.to_string()),
        ("sent", sent.to_string()),
        ("deliveries_per_s", format!("{:.0}", delivered as f64 / measured)),
        ("p50_us", p50.to_string()),
        ("p99_us", p99.to_string()),
        ("bystander_p99_us", percentiles(&bystander_total).1.to_string()),
        ("lost", lost.to_string()),
    ])
}

async fn idle(target: &[Target], conns: usize, concurrency: usize, server_pid: Option<u32>) -> anyhow::Result<Report> {
    let rss_before = server_pid.and_then(rss_kib);
    let started = Instant::now();
    let (clients, failed) = connect_all(target, conns, concurrency).await;
    let connect_s = started.elapsed().as_secs_f64();
    // Every handshake is complete; let the server's last replies settle into memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = server_pid.and_then(rss_kib);
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if !clients.is_empty() => {
            format!("{:.2}", (a.saturating_sub(b)) as f64 / clients.len() as f64)
        }
        _ => "null".into(),
    };
    let ok = clients.len();
    if ok == 0 {
        bail!("no connection succeeded");
    }
    drop(clients);
    Ok(vec![
        ("mode", "\"conns\"".into()),
        ("conns", ok.to_string()),
        ("failed", failed.to_string()),
        ("connect_s", format!("{connect_s:.2}")),
        ("handshakes_per_s", format!("{:.0}", ok as f64 / connect_s.max(1e-9))),
        ("rss_before_kib", rss_before.map_or("null".into(), |v| v.to_string())),
        ("rss_after_kib", rss_after.map_or("null".into(), |v| v.to_string())),
        ("rss_per_conn_kib", per_conn),
    ])
}
