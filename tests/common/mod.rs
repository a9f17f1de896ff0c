//! Helpers for the integration tests: the real `host` binary with a real plugin, and
//! a deliberately small raw WebSocket client over `std::net::TcpStream` (or any other
//! [`Transport`], such as a TLS stream), so that the tests control every bit on the
//! wire (masking, RSV bits, opcodes, fragmentation).
//!
//! Nothing here waits by sleeping: the server announces its port on stdout, and the
//! client's reads block until the expected bytes arrive. The read timeout only turns a
//! hang into a failure.

#![allow(dead_code)]

pub mod redis;
pub mod tls;

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any single read may block before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long the end of the connection may take to arrive once the server is done with
/// it. Shorter than the server's 5 s close timeout, so that a server that fails to
/// close the connection (and only drops it when that timeout expires) fails the test.
const EOF_TIMEOUT: Duration = Duration::from_secs(4);

/// How long the server may take to load its plugin and print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The key of every handshake, and its accept value, both from RFC 6455 section 1.3.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// First bytes of frames: FIN set, no RSV bit, and the opcode.
pub const TEXT: u8 = 0x81;
pub const BINARY: u8 = 0x82;
pub const CLOSE: u8 = 0x88;
pub const PING: u8 = 0x89;
pub const PONG: u8 = 0x8A;
/// FIN and RSV1: a compressed (permessage-deflate) single-frame message.
pub const COMPRESSED_TEXT: u8 = 0xC1;
pub const COMPRESSED_BINARY: u8 = 0xC2;

/// What a [`Client`] speaks WebSocket over: a byte stream on top of a TCP connection
/// (the connection itself, or TLS over it).
pub trait Transport: Read + Write {
    /// The TCP connection underneath, for timeouts, addresses and shutdown.
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// The path of a built plugin: `$WSPLUG_PLUGIN_DIR/<name>.wasm`, by default in the
/// workspace's target directory.
pub fn plugin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("WSPLUG_PLUGIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/wasm32-wasip2/release")),
    };
    let path = dir.join(format!("{name}.wasm"));
    if !path.is_file() {
        panic!(
            "plugin {name} not built: run `make plugins` (looked for {})",
            path.display()
        );
    }
    path
}

/// The turns of the tests of one binary: [`exclusive`] takes it to write, [`shared`]
/// to read. Tests that take neither (they start no server) run whenever.
static TURNS: RwLock<()> = RwLock::new(());

/// Held for its whole run by a test whose outcome depends on timing: one that measures
/// a latency or a throughput, asserts that something happens within a tight bound (a
/// p99, a time window's count), relies on a timeout firing (or not) within a bound that
/// CPU contention could break, depends on process-global state another test could
/// change, or is itself CPU-heavy enough (hundreds of connections, hundreds of MB, a
/// sustained load) to break another test's timing. It runs alone among the tests of
/// its binary that take either guard: on a 2-core machine, a measurement would
/// otherwise measure the other tests too.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    // A test that failed while holding the lock poisons it; the next one may still run.
    TURNS.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held for its whole run by every other test that starts a server (or another
/// process): it runs beside other shared tests, never beside an [`exclusive`] one.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    // A test that failed while holding the lock poisons it; the next one may still run.
    TURNS.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends a text message and returns the text reply.
pub fn ask(client: &mut Client, text: &str) -> String {
    client.send_text(text);
    client.recv_text()
}

/// Asks `client` until the answer satisfies `done`, or panics after `within`: polling a
/// condition the server (or a cluster's hosts) converges to, not a sleep standing in for one.
pub fn ask_until(client: &mut Client, question: &str, within: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let answer = ask(client, question);
        if done(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{question:?} still answered {answer:?} after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh, empty directory under the system's temp dir, removed with its contents
/// when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<temp>/wsplug-<label>-<pid>-<n>`, unique within and across test runs.
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("wsplug-{label}-{}-{n}", std::process::id()));
        // A leftover of an earlier run with the same pid would not be fresh.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("temp dir path is not UTF-8")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes ANSI escape sequences (the log's colours), so that tests can match
/// `field="value"` as it reads.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                // Parameters and intermediates up to the final byte, '@' to '~'.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What the server wrote to stderr so far, shared with the thread that reads it.
#[derive(Default)]
struct Log {
    text: Mutex<String>,
    grew: Condvar,
}

impl Log {
    /// The text, even if a test failed (panicked) while holding the lock: a failure
    /// must still show the log, not turn into a panic while panicking.
    fn lock(&self) -> MutexGuard<'_, String> {
        self.text.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running `host` process, killed when dropped.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The scheme it announced: `ws` or `wss`.
    pub scheme: String,
    log: Arc<Log>,
    readers: Vec<JoinHandle<()>>,
    /// The server's own compile cache, removed after the process is killed.
    cache: Option<TempDir>,
    /// Its key-value store's directory, unless the test gave one (`--store-dir`).
    store: Option<TempDir>,
}

impl Server {
    /// Starts `host --listen 127.0.0.1:0 --plugin <plugin>.wasm <args>` and waits for
    /// the line that announces its address.
    pub fn start(plugin: &str, args: &[&str]) -> Server {
        Server::start_file(&plugin_path(plugin), args)
    }

    /// Like [`Server::start`], with its own `--cache-dir` in a fresh temp dir, so that
    /// it neither shares compiled code with other tests nor touches the user's cache.
    pub fn start_isolated(plugin: &Path, args: &[&str]) -> Server {
        Server::start_isolated_env(plugin, args, &[])
    }

    /// Like [`Server::start_isolated`], with these variables set in its environment.
    pub fn start_isolated_env(plugin: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let cache = TempDir::new("cache");
        let mut all = vec!["--cache-dir", cache.arg()];
        all.extend_from_slice(args);
        let mut server = Server::launch(Some(plugin), &all, env);
        server.cache = Some(cache);
        server
    }

    /// Starts `host --listen 127.0.0.1:0 --plugin <plugin> <args>` with the plugin at
    /// any path, and waits for the line that announces its address. (When `args` has a
    /// `--listen` of its own, it replaces `127.0.0.1:0`; this holds for every `start`.)
    pub fn start_file(plugin: &Path, args: &[&str]) -> Server {
        Server::launch(Some(plugin), args, &[])
    }

    /// Starts `host --listen 127.0.0.1:0 --config <config> <args>` with no `--plugin`:
    /// the config file's `[[route]]` tables give the plugins.
    pub fn start_config(config: &Path, args: &[&str]) -> Server {
        let mut all = vec!["--config", config.to_str().expect("UTF-8 path")];
        all.extend_from_slice(args);
        Server::launch(None, &all, &[])
    }

    /// Like [`Server::start`], with the host run by `wrapper` (a command that ends by
    /// running the rest of its arguments, in the same process: `prlimit ... --`).
    pub fn start_wrapped(plugin: &str, args: &[&str], wrapper: &[&str]) -> Server {
        Server::launch_in(wrapper, Some(&plugin_path(plugin)), args, &[])
    }

    fn launch(plugin: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch_in(&[], plugin, args, env)
    }

    fn launch_in(wrapper: &[&str], plugin: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Server {
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        // Every server gets a store of its own, so that tests never share data (or the
        // database's lock), unless the test names one.
        let store = (!args.contains(&"--store-dir")).then(|| TempDir::new("store"));
        let store_args: Vec<&str> = store.iter().flat_map(|dir| ["--store-dir", dir.arg()]).collect();
        let plugin_args: Vec<&std::ffi::OsStr> = plugin
            .iter()
            .flat_map(|plugin| ["--plugin".as_ref(), plugin.as_os_str()])
            .collect();
        let host = env!("CARGO_BIN_EXE_host");
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(host);
                command
            }
            None => Command::new(host),
        };
        let mut child = command
            .args(listen)
            .args(plugin_args)
            .args(args)
            .args(&store_args)
            // --log decides the level: a RUST_LOG in the environment would override it.
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the host binary");

        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_log = log.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                let mut text = stderr_log.lock();
                text.push_str(&line);
                text.push('\n');
                stderr_log.grew.notify_all();
            }
        });

        // Read stdout on a thread so that a server that never prints fails the test
        // after a while instead of hanging it; keep draining it afterwards.
        let stdout = child.stdout.take().expect("piped stdout");
        let (first_line, announced) = mpsc::channel();
        let stdout_reader = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = first_line.send(lines.next());
            for _ in lines {}
        });

        let mut server = Server {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            scheme: String::new(),
            log,
            readers: vec![],
            cache: None,
            store,
        };
        server.readers = vec![stderr_reader, stdout_reader];
        let line = match announced.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => server.fail("the server exited before announcing its address"),
            Err(_) => server.fail("the server did not announce its address in time"),
        };
        let announced = line
            .strip_prefix("wsplug listening on ")
            .and_then(|url| url.split_once("://"))
            .filter(|(scheme, _)| ["ws", "wss"].contains(scheme))
            .and_then(|(scheme, addr)| Some((scheme, addr.parse().ok()?)));
        match announced {
            Some((scheme, addr)) => {
                server.scheme = scheme.to_owned();
                server.addr = addr;
            }
            None => server.fail(&format!("unexpected first stdout line {line:?}")),
        }
        server
    }

    /// Panics with `message` and, once the process has exited, everything it logged.
    fn fail(&mut self, message: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let log = self.log.lock().clone();
        panic!("{message}; server stderr:\n{log}");
    }

    /// Opens a WebSocket connection to `path` (asserting a plain 101 response).
    pub fn connect(&self, path: &str) -> Client {
        Client::connect(self.addr, path)
    }

    /// Waits until the server's stderr contains `needle`; panics after [`TIMEOUT`].
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        let mut text = self.log.lock();
        while !text.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "server log never contained {needle:?}; it holds:\n{text}"
            );
            text = self.log.grew.wait_timeout(text, left).unwrap().0;
        }
    }

    /// Everything the server logged so far (stderr, colours removed).
    pub fn log(&self) -> String {
        self.log.lock().clone()
    }

    /// The lines of the log so far that satisfy `matches`.
    pub fn log_lines(&self, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let text = self.log.lock();
        text.lines().filter(|line| matches(line)).map(str::to_owned).collect()
    }

    /// Waits until at least `count` lines of the log satisfy `matches` and returns
    /// every such line; panics after [`TIMEOUT`].
    pub fn wait_for_log_lines(&self, count: usize, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut text = self.log.lock();
        loop {
            let lines: Vec<String> = text.lines().filter(|line| matches(line)).map(str::to_owned).collect();
            if lines.len() >= count {
                return lines;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "server log never had {count} matching lines (it has {}); it holds:\n{text}",
                lines.len()
            );
            text = self.log.grew.wait_timeout(text, left).unwrap().0;
        }
    }

    /// The process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics, with the exit status and the log, if the process is no longer running.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.fail(&format!("the server exited: {status}"));
        }
    }

    /// The resident set size of the process (`VmRSS` in `/proc/<pid>/status`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {path}:\n{status}"))
    }

    /// Sends SIGHUP to the process (with `kill -HUP`).
    pub fn hangup(&self) {
        self.signal("HUP");
    }

    /// Sends SIGTERM to the process (with `kill -TERM`).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`HUP`, `TERM`, ...) to the process with `kill`.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    /// Waits for the process to exit, polling, and returns its status; panics, with the
    /// log, if it is still running after `within`. Once it has exited, the log holds
    /// everything it wrote.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let status = wait_child(&mut self.child, within)
            .unwrap_or_else(|| self.fail(&format!("the server did not exit within {within:?}")));
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }
}

/// Waits for `child` to exit, polling every 10 ms for at most `within`.
fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("cannot wait for the process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How a `host` run that was expected to stop by itself ended.
#[derive(Debug)]
pub struct Exit {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `host <args>` (nothing added: no `--listen`, no `--plugin`) and waits for it to
/// exit by itself; kills it and panics, with what it wrote, if it is still running
/// after `within` (a server that started when it should have refused to). It runs
/// with `RUST_BACKTRACE=1`, so that a panic, or an error printed with its backtrace,
/// shows in what it wrote.
pub fn run_host(args: &[&str], within: Duration) -> Exit {
    let mut child = Command::new(env!("CARGO_BIN_EXE_host"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the host binary");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let exited = wait_child(&mut child, within).is_some();
    if !exited {
        let _ = child.kill();
    }
    let exit = Exit {
        status: child.wait().expect("cannot wait for the process"),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    assert!(exited, "host {args:?} still ran after {within:?}; it wrote: {exit:?}");
    exit
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
            eprintln!("--- server stderr ---\n{}", self.log.lock());
        }
    }
}

/// An HTTP response head (and body, for refusals).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The value of the only header named `name` (any case); panics if it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let value = values.next().map(|(_, v)| v.as_str());
        assert!(values.next().is_none(), "header {name} is repeated: {:?}", self.headers);
        value
    }
}

/// The request a well-behaved client sends, with `extra` headers appended.
pub fn upgrade_request(path: &str, extra: &[(&str, &str)]) -> String {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// Sends raw bytes as an HTTP request and reads the response: head, then a body of
/// `Content-Length` bytes. For requests the server refuses.
pub fn http_request(addr: SocketAddr, request: &[u8]) -> Response {
    let mut client = Client::open(addr);
    client.stream.write_all(request).expect("cannot send the request");
    let mut response = client.read_response();
    let length: usize = response
        .header("content-length")
        .expect("a refusal has a Content-Length")
        .parse()
        .expect("numeric Content-Length");
    client.fill(length);
    response.body = client.buf.drain(..length).collect();
    client.expect_eof();
    response
}

/// A raw WebSocket client, over TCP unless said otherwise.
pub struct Client<S: Transport = TcpStream> {
    pub stream: S,
    /// Bytes received and not consumed yet.
    buf: Vec<u8>,
    /// Varies the masking key from frame to frame.
    frames_sent: u32,
}

impl Client {
    /// A plain TCP connection, before any handshake.
    pub fn open(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("cannot connect to the server");
        Client::over(stream)
    }

    /// Sends the upgrade request for `path` with `extra` headers and reads the
    /// response head. Bytes after the head stay buffered for [`Client::read_frame`].
    pub fn handshake(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> (Client, Response) {
        Client::handshake_raw(addr, upgrade_request(path, extra).as_bytes())
    }

    /// Sends `bytes` (a request, possibly followed by frames) in one write and reads
    /// the response head.
    pub fn handshake_raw(addr: SocketAddr, bytes: &[u8]) -> (Client, Response) {
        let mut client = Client::open(addr);
        client.send_raw(bytes);
        let response = client.read_response();
        (client, response)
    }

    /// Opens a connection, asserting a 101 with the right accept key and no extension.
    pub fn connect(addr: SocketAddr, path: &str) -> Client {
        let (client, response) = Client::handshake(addr, path, &[]);
        assert_plain_switch(&response);
        client
    }
}

impl<S: Transport> Client<S> {
    /// A client over `stream`, before any handshake (for TCP, [`Client::open`]).
    pub fn over(stream: S) -> Client<S> {
        stream.tcp().set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.tcp().set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            frames_sent: 0,
        }
    }

    /// Sends the upgrade request for `path` and asserts a 101 with the right accept
    /// key and no extension (for TCP, [`Client::connect`] does it all).
    pub fn upgrade(&mut self, path: &str) {
        self.send_raw(upgrade_request(path, &[]).as_bytes());
        assert_plain_switch(&self.read_response());
    }

    /// Reads an HTTP response head.
    pub fn read_response(&mut self) -> Response {
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if !self.read_more() {
                panic!(
                    "connection closed inside the response head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        };
        let head: Vec<u8> = self.buf.drain(..end).collect();
        let head = String::from_utf8(head).expect("response head is not UTF-8");
        let mut lines = head.trim_end().split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {line:?}"));
                (name.to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        Response {
            status,
            headers,
            body: Vec::new(),
        }
    }

    /// Reads once into the buffer; false at end of stream.
    fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("read timed out after {TIMEOUT:?} (buffered: {} bytes)", self.buf.len())
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Reads until at least `n` bytes are buffered.
    fn fill(&mut self, n: usize) {
        while self.buf.len() < n {
            if !self.read_more() {
                panic!(
                    "connection closed with {} of {n} expected bytes buffered",
                    self.buf.len()
                );
            }
        }
    }

    /// Writes bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("cannot write to the server");
    }

    /// Sends one frame: `first` is the whole first byte (FIN, RSV1-3, opcode); the
    /// payload is masked with a fresh key if `masked`.
    pub fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mask = masked.then(|| self.next_mask());
        self.send_raw(&encode_frame(first, payload, mask));
    }

    fn next_mask(&mut self) -> [u8; 4] {
        self.frames_sent += 1;
        (0x9E37_79B9u32.wrapping_mul(self.frames_sent) | 1).to_be_bytes()
    }

    /// Reads one frame; returns its first byte and its payload. Server frames must
    /// not be masked.
    pub fn read_frame(&mut self) -> (u8, Vec<u8>) {
        self.fill(2);
        let (first, second) = (self.buf[0], self.buf[1]);
        assert_eq!(second & 0x80, 0, "the server masked a frame");
        let (len, header) = match second & 0x7F {
            126 => {
                self.fill(4);
                (u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
            }
            127 => {
                self.fill(10);
                (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()), 10)
            }
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len).unwrap();
        self.fill(header + len);
        let payload = self.buf[header..header + len].to_vec();
        self.buf.drain(..header + len);
        (first, payload)
    }

    /// Reads one frame, or `None` if the connection ends first (closed, or reset by a
    /// server that was killed).
    pub fn try_read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            let extent = match self.buf.get(..2).map(|b| b[1] & 0x7F) {
                Some(126) if self.buf.len() >= 4 => {
                    Some(4 + usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])))
                }
                Some(127) if self.buf.len() >= 10 => {
                    Some(10 + usize::try_from(u64::from_be_bytes(self.buf[2..10].try_into().unwrap())).unwrap())
                }
                Some(n) if n < 126 => Some(2 + usize::from(n)),
                _ => None,
            };
            if extent.is_some_and(|extent| self.buf.len() >= extent) {
                return Some(self.read_frame());
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("read timed out after {TIMEOUT:?} (buffered: {} bytes)", self.buf.len())
                }
                Err(_) => return None,
            }
        }
    }

    /// Sends a masked text message in one frame; whether it could be written (not if
    /// the server is gone).
    pub fn try_send_text(&mut self, text: &str) -> bool {
        let mask = self.next_mask();
        self.stream
            .write_all(&encode_frame(TEXT, text.as_bytes(), Some(mask)))
            .is_ok()
    }

    /// Sends a masked text message in one frame.
    pub fn send_text(&mut self, text: &str) {
        self.send_frame(TEXT, text.as_bytes(), true);
    }

    /// Sends a masked binary message in one frame.
    pub fn send_binary(&mut self, data: &[u8]) {
        self.send_frame(BINARY, data, true);
    }

    /// Sends a masked close frame with a code and reason.
    pub fn send_close(&mut self, code: u16, reason: &str) {
        self.send_frame(CLOSE, &close_payload(code, reason), true);
    }

    /// Reads a frame that must be an uncompressed, unfragmented text message.
    pub fn recv_text(&mut self) -> String {
        let (first, payload) = self.read_frame();
        assert_eq!(
            first,
            TEXT,
            "expected a text frame, got first byte {first:#04x}, payload {:?}",
            lossy(&payload)
        );
        String::from_utf8(payload).expect("the server sent invalid UTF-8 in a text frame")
    }

    /// Reads a frame that must be an uncompressed, unfragmented binary message.
    pub fn recv_binary(&mut self) -> Vec<u8> {
        let (first, payload) = self.read_frame();
        assert_eq!(
            first,
            BINARY,
            "expected a binary frame, got first byte {first:#04x}, payload {:?}",
            lossy(&payload)
        );
        payload
    }

    /// Reads a frame that must be a close frame with a status code; returns the code
    /// and the reason.
    pub fn recv_close(&mut self) -> (u16, String) {
        let (first, payload) = self.read_frame();
        assert_eq!(
            first,
            CLOSE,
            "expected a close frame, got first byte {first:#04x}, payload {:?}",
            lossy(&payload)
        );
        assert!(payload.len() >= 2, "close frame without a status code: {payload:?}");
        assert!(payload.len() <= 125, "close frame of {} bytes", payload.len());
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        let reason = String::from_utf8(payload[2..].to_vec()).expect("close reason is not UTF-8");
        (code, reason)
    }

    /// Asserts that the server closed the TCP connection and sent nothing more.
    pub fn expect_eof(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes before the end: {:?}",
            lossy(&self.buf)
        );
        self.stream.tcp().set_read_timeout(Some(EOF_TIMEOUT)).unwrap();
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("expected the end of the connection, got more bytes, starting with {byte:?}"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the server did not close the connection within {EOF_TIMEOUT:?}")
            }
            Err(e) => panic!("expected the end of the connection, got error {e}"),
        }
        self.stream.tcp().set_read_timeout(Some(TIMEOUT)).unwrap();
    }

    /// Drops the TCP connection without a closing handshake.
    pub fn shutdown(&self) {
        self.stream
            .tcp()
            .shutdown(Shutdown::Both)
            .expect("cannot shut the connection down");
    }
}

/// Asserts a successful upgrade without extension or subprotocol.
fn assert_plain_switch(response: &Response) {
    assert_switched(response);
    assert_eq!(response.header("sec-websocket-extensions"), None);
    assert_eq!(response.header("sec-websocket-protocol"), None);
}

/// Asserts a successful upgrade: 101, the right accept key, the upgrade headers.
pub fn assert_switched(response: &Response) {
    assert_eq!(response.status, 101, "handshake refused: {response:?}");
    assert_eq!(response.header("sec-websocket-accept"), Some(ACCEPT));
    assert_eq!(
        response.header("upgrade").map(str::to_ascii_lowercase).as_deref(),
        Some("websocket")
    );
    assert_eq!(
        response.header("connection").map(str::to_ascii_lowercase).as_deref(),
        Some("upgrade")
    );
}

/// A whole frame: header, optional masking key, (masked) payload.
pub fn encode_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(first);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => frame.push(mask_bit | n as u8),
        n @ 126..=0xFFFF => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => frame.extend_from_slice(payload),
    }
    frame
}

/// A close frame's payload.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// Deterministic pseudo-random bytes, so that a corrupted echo cannot look right by chance.
pub fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn lossy(bytes: &[u8]) -> String {
    if bytes.len() > 200 {
        format!("{} bytes: {}...", bytes.len(), String::from_utf8_lossy(&bytes[..200]))
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Reads the `id <n>` the probe plugin sends on open.
pub fn expect_id(client: &mut Client) -> u64 {
    let text = client.recv_text();
    text.strip_prefix("id ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("expected `id <n>`, got {text:?}"))
}

/// Connects to the probe plugin at `path`; returns the client and its connection id.
/// Once the id has arrived, the plugin has handled the open (and the server registered it).
pub fn open_probe(server: &Server, path: &str) -> (Client, u64) {
    let mut client = server.connect(path);
    let id = expect_id(&mut client);
    (client, id)
}

/// A plugin file in a temp dir of its own, which the tests replace.
pub struct PluginFile {
    dir: TempDir,
}

impl PluginFile {
    /// `<temp dir>/plugin.wasm`, a copy of the built plugin `name`.
    pub fn copy_of(name: &str) -> PluginFile {
        let dir = TempDir::new("plugin");
        fs::copy(plugin_path(name), dir.join("plugin.wasm")).unwrap();
        PluginFile { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("plugin.wasm")
    }

    /// Replaces the file atomically: writes a temp file next to it, renames it over it.
    pub fn replace_by_rename(&self, bytes: &[u8]) {
        let partial = self.dir.join("plugin.wasm.partial");
        fs::write(&partial, bytes).unwrap();
        fs::rename(&partial, self.path()).unwrap();
    }

    /// Rewrites the file in place: opens it with truncation and writes the bytes.
    pub fn replace_in_place(&self, bytes: &[u8]) {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.path())
            .unwrap();
        file.write_all(bytes).unwrap();
    }
}

/// `component` with a custom section (id 0) appended: `name`, then `payload`.
pub fn with_custom_section(component: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7F) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut contents = Vec::new();
    leb128(name.len(), &mut contents);
    contents.extend_from_slice(name.as_bytes());
    contents.extend_from_slice(payload);
    let mut bytes = component.to_vec();
    bytes.push(0x00);
    leb128(contents.len(), &mut bytes);
    bytes.extend_from_slice(&contents);
    bytes
}

/// `GET path` over a connection of its own; the response with its body.
pub fn http_get(addr: SocketAddr, path: &str) -> Response {
    http_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
    )
}

/// A scrape of `/metrics`: every sample, by name and labels.
pub struct Scrape {
    /// The text as served.
    pub text: String,
    samples: Vec<(String, std::collections::BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Scrapes `http://addr/metrics`; panics unless it answers 200.
    pub fn of(addr: SocketAddr) -> Scrape {
        let response = http_get(addr, "/metrics");
        let text = String::from_utf8(response.body).expect("UTF-8 metrics");
        assert_eq!(response.status, 200, "{text}");
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("`series value`");
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
                let (name, labels) = match series.split_once('{') {
                    None => (series, Default::default()),
                    Some((name, labels)) => {
                        let labels = labels.strip_suffix('}').expect("closing brace");
                        let labels = labels
                            .split(',')
                            .filter(|pair| !pair.is_empty())
                            .map(|pair| {
                                let (key, value) = pair.split_once('=').expect("label=value");
                                (key.to_owned(), value.trim_matches('"').to_owned())
                            })
                            .collect();
                        (name, labels)
                    }
                };
                (name.to_owned(), labels, value)
            })
            .collect();
        Scrape { text, samples }
    }

    /// The value of the series `name{labels}` (exactly these labels); panics if absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: std::collections::BTreeMap<String, String> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in:\n{}", self.text))
    }

    /// The sum of every series `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Scrapes until `ready` holds for a scrape (the server counts some things just
    /// after it answers the client), for 10 s at most; returns that scrape.
    pub fn until(addr: SocketAddr, ready: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let scrape = Scrape::of(addr);
            if ready(&scrape) {
                return scrape;
            }
            assert!(
                Instant::now() < deadline,
                "the metrics never got there:\n{}",
                scrape.text
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
