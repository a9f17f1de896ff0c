//! A `redis-server` of a test's own, on a free port of 127.0.0.1, for the cluster tests,
//! and a bare RESP client to it: to read what hosts keep there and to write to it as
//! anyone with access to Redis could.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A `redis-server` of the test's own, without persistence, killed when dropped.
pub struct Redis {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Settings beyond the port and no persistence.
    settings: Vec<String>,
    /// It listens for TLS only (on `port`).
    tls: bool,
    /// What it logged (its stdout).
    log: Arc<Mutex<String>>,
}

impl Redis {
    /// Sends it a signal (`-STOP`, `-CONT`), as `kill` names it.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::process::Command::new("kill")
            .args([name, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {name} {pid}");
    }

    /// Starts one on a free port and waits until it accepts connections.
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// Like [`Redis::start`], with these settings (`--name value` pairs) too.
    pub fn start_with(settings: &[&str]) -> Redis {
        Redis::start_on_a_free_port(settings, false)
    }

    /// Like [`Redis::start_with`], listening for TLS only, with `settings` naming its
    /// certificate, key and CA (`--tls-cert-file` ...).
    pub fn start_tls(settings: &[&str]) -> Redis {
        Redis::start_on_a_free_port(settings, true)
    }

    /// A server on a port that was free a moment ago: tests run side by side, so another
    /// may take it before Redis binds it; then another port is tried.
    fn start_on_a_free_port(settings: &[&str], tls: bool) -> Redis {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut redis = Redis {
                child: None,
                port,
                settings: settings.iter().map(|s| s.to_string()).collect(),
                tls,
                log: Arc::default(),
            };
            if redis.try_start() {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// The URL hosts are given.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Sends one command, its arguments as bytes, on a connection of its own, and
    /// returns the reply.
    pub fn command(&self, args: &[&[u8]]) -> Reply {
        let mut connection = Connection::open(self.port);
        connection.send(args);
        connection.reply()
    }

    /// A connection subscribed to `channel`, once Redis confirmed it.
    pub fn subscribe(&self, channel: &str) -> Connection {
        let mut connection = self.connection();
        connection.subscribe(channel);
        connection
    }

    /// A connection of its own.
    pub fn connection(&self) -> Connection {
        Connection::open(self.port)
    }

    /// Starts the server (again) on its port; returns once it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.try_start(), "redis-server exited before it was ready");
    }

    /// Starts the server on its port: whether it got ready (it exits if the port is taken).
    fn try_start(&mut self) -> bool {
        let binary = std::env::var("WSPLUG_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = self.port.to_string();
        let ports = if self.tls {
            ["--port", "0", "--tls-port", &port]
        } else {
            ["--port", &port, "--tls-port", "0"]
        };
        let mut child = Command::new(&binary)
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "notice"])
            .args(&self.settings)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} (make test installs it): {e}"));
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut lines = stdout.lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("Ready to accept connections"));
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        // Keep reading its output, so that it never blocks on a full pipe.
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        self.child = Some(child);
        true
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether its log has a line containing `needle` (it may still come: the caller polls).
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().contains(needle)
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A reply of Redis (RESP2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK` and the like.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:N`.
    Integer(i64),
    /// `$N` bytes, or none (`$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*N` replies.
    Array(Vec<Reply>),
}

impl Reply {
    /// Everything it holds as text (bytes that are not UTF-8 replaced), to search.
    pub fn text(&self) -> String {
        match self {
            Reply::Simple(text) | Reply::Error(text) => text.clone(),
            Reply::Integer(n) => n.to_string(),
            Reply::Bulk(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Reply::Bulk(None) => String::new(),
            Reply::Array(items) => items.iter().map(Reply::text).collect::<Vec<_>>().join(" "),
        }
    }

    /// The bytes of a bulk reply; panics on anything else.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Reply::Bulk(Some(bytes)) => bytes.clone(),
            other => panic!("expected bytes, got {other:?}"),
        }
    }
}

/// A plain connection to the test's Redis, speaking RESP2 by hand.
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(port: u16) -> Connection {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("cannot connect to redis-server");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Connection {
            reader: BufReader::new(stream),
        }
    }

    /// Subscribes to `channel`; returns once Redis confirmed it.
    pub fn subscribe(&mut self, channel: &str) {
        self.send(&[b"SUBSCRIBE", channel.as_bytes()]);
        let confirmed = self.reply();
        assert!(
            matches!(&confirmed, Reply::Array(items) if items.len() == 3),
            "{confirmed:?}"
        );
    }

    /// Sends one command.
    pub fn send(&mut self, args: &[&[u8]]) {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        self.reader
            .get_mut()
            .write_all(&request)
            .expect("cannot write to redis-server");
    }

    /// Reads one reply.
    pub fn reply(&mut self) -> Reply {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("no reply from redis-server");
        assert!(
            !line.is_empty(),
            "redis-server closed the connection (it cut a subscriber off?)"
        );
        let (kind, rest) = line.trim_end().split_at(1);
        match kind {
            "+" => Reply::Simple(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Integer(rest.parse().unwrap()),
            "$" => match rest.parse::<i64>().unwrap() {
                -1 => Reply::Bulk(None),
                len => {
                    let mut bytes = vec![0; len as usize + 2];
                    self.reader.read_exact(&mut bytes).unwrap();
                    bytes.truncate(len as usize);
                    Reply::Bulk(Some(bytes))
                }
            },
            "*" => Reply::Array((0..rest.parse::<i64>().unwrap().max(0)).map(|_| self.reply()).collect()),
            _ => panic!("unexpected reply line {line:?}"),
        }
    }

    /// The payload of the next message on a subscribed channel, or `None` if none comes
    /// within `within`.
    pub fn next_message(&mut self, within: Duration) -> Option<Vec<u8>> {
        self.reader.get_ref().set_read_timeout(Some(within)).unwrap();
        let mut peek = [0u8; 1];
        let got = self.reader.get_ref().peek(&mut peek);
        self.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        if got.is_err() && self.reader.buffer().is_empty() {
            return None;
        }
        match self.reply() {
            Reply::Array(items) if items.len() == 3 => Some(items[2].bytes()),
            other => panic!("expected a message, got {other:?}"),
        }
    }
}
