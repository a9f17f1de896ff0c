//! The opening handshake, server side (RFC 6455 section 4.2): parsing the client's
//! HTTP/1.1 upgrade request, validating it, and building the response.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

use super::deflate::{self, DeflateConfig, DeflateParams};

/// The GUID that RFC 6455 appends to the client's key to compute the accept value.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// At most this many request headers are parsed; more is answered with 431.
pub const MAX_HEADERS: usize = 64;

/// How the server answers handshakes.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// The request head (request line and headers) may not exceed this many bytes (431 otherwise).
    pub max_request_bytes: usize,
    /// Subprotocols the server speaks; the first one the client offers is selected.
    pub subprotocols: Vec<String>,
    /// permessage-deflate settings, or `None` to never negotiate compression.
    pub deflate: Option<DeflateConfig>,
    /// `Origin` values allowed to connect (compared case-insensitively); empty allows any.
    pub allowed_origins: Vec<String>,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: MAX_REQUEST_BYTES,
            subprotocols: Vec::new(),
            deflate: Some(DeflateConfig::default()),
            allowed_origins: Vec::new(),
        }
    }
}

/// A valid upgrade request, with what the connection needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The request method, e.g. `GET`.
    pub method: String,
    /// Path part of the request target, e.g. `/chat`.
    pub path: String,
    /// Query string without the `?`, if any.
    pub query: Option<String>,
    /// All headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The subprotocols offered in `Sec-WebSocket-Protocol`, in the client's order.
    pub fn offered_subprotocols(&self) -> impl Iterator<Item = &str> + '_ {
        self.header_values("sec-websocket-protocol")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
    }

    /// Values of every header named `name` (lower-case), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The handshake succeeded: what was negotiated, and the 101 response to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The parsed request.
    pub request: Request,
    /// The selected subprotocol, if any. The application may choose another of the
    /// offered ones ([`Accepted::choose_subprotocol`]) before the response is built.
    pub subprotocol: Option<String>,
    /// The agreed permessage-deflate parameters, if compression is on.
    pub deflate: Option<DeflateParams>,
    /// `Sec-WebSocket-Accept`.
    accept_key: String,
    /// `Sec-WebSocket-Extensions` of the response, if compression is on.
    extension: Option<String>,
}

impl Accepted {
    /// Selects `subprotocol` (or none) instead of the configured choice. Only one the
    /// client offered may be chosen (RFC 6455 section 4.2.2): anything else is an error.
    pub fn choose_subprotocol(&mut self, subprotocol: Option<String>) -> Result<(), NotOffered> {
        if let Some(chosen) = &subprotocol
            && !self.request.offered_subprotocols().any(|p| p == chosen)
        {
            return Err(NotOffered);
        }
        self.subprotocol = subprotocol;
        Ok(())
    }

    /// The complete `101 Switching Protocols` response.
    pub fn response(&self) -> Vec<u8> {
        let mut response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            self.accept_key
        );
        if let Some(protocol) = &self.subprotocol {
            response.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
        }
        if let Some(extension) = &self.extension {
            response.push_str(&format!("Sec-WebSocket-Extensions: {extension}\r\n"));
        }
        response.push_str("\r\n");
        response.into_bytes()
    }
}

/// A subprotocol the client did not offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("subprotocol not offered by the client")]
pub struct NotOffered;

/// The handshake failed: the HTTP status to answer with, why, and the headers RFC 6455
/// asks that answer to carry. The server writes the response (the `wsplug-http` crate).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {detail}")]
pub struct Rejection {
    /// HTTP status code (400, 405, 426, 431, ...).
    pub status: u16,
    /// What was wrong, for the log and the response body.
    pub detail: &'static str,
}

impl Rejection {
    /// A rejection with `status` and what was wrong.
    pub fn new(status: u16, detail: &'static str) -> Self {
        Self { status, detail }
    }

    /// The headers the answer must carry: what method is allowed (405), which version the
    /// server speaks (426).
    pub fn headers(&self) -> &'static [(&'static str, &'static str)] {
        match self.status {
            405 => &[("Allow", "GET")],
            426 => &[("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")],
            _ => &[],
        }
    }
}

/// The default bound of a request head, in bytes (431 beyond).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// What [`accept`] made of the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request head is not complete yet: read more.
    Incomplete,
    /// Upgrade accepted; the request head was `consumed` bytes long. Bytes after it
    /// are the client's first frames.
    Accepted { accepted: Box<Accepted>, consumed: usize },
    /// Upgrade refused: send the response and close.
    Rejected(Rejection),
    /// A plain HTTP request (no `Upgrade: websocket`), `consumed` bytes long, for the
    /// caller to answer (static files) or refuse.
    Plain { request: Box<Request>, consumed: usize },
}

/// Parses and validates the request head at the start of `buf`.
pub fn accept(buf: &[u8], config: &HandshakeConfig) -> Outcome {
    accept_routed(buf, config.max_request_bytes, |_| Some(config))
}

/// Like [`accept`] for a server with several routes: an upgrade request is validated
/// against the configuration `route` gives for its path, or refused with 404 before
/// anything else is checked if it gives none. Plain requests are not routed. Heads
/// over `max_request_bytes` are refused (431).
pub fn accept_routed<'c>(
    buf: &[u8],
    max_request_bytes: usize,
    route: impl FnOnce(&str) -> Option<&'c HandshakeConfig>,
) -> Outcome {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let consumed = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= max_request_bytes => n,
        Ok(httparse::Status::Complete(_)) => {
            return Outcome::Rejected(Rejection::new(431, "request head too large"));
        }
        Ok(httparse::Status::Partial) if buf.len() > max_request_bytes => {
            return Outcome::Rejected(Rejection::new(431, "request head too large"));
        }
        Ok(httparse::Status::Partial) => return Outcome::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return Outcome::Rejected(Rejection::new(431, "too many request headers"));
        }
        Err(_) => return Outcome::Rejected(Rejection::new(400, "malformed HTTP request")),
    };
    match validate(&parsed, route) {
        Ok(Validated::Upgrade(accepted)) => Outcome::Accepted {
            accepted: Box::new(accepted),
            consumed,
        },
        Ok(Validated::Plain(request)) => Outcome::Plain {
            request: Box::new(request),
            consumed,
        },
        Err(rejection) => Outcome::Rejected(rejection),
    }
}

/// A request that passed validation.
enum Validated {
    Upgrade(Accepted),
    Plain(Request),
}

fn validate<'c>(
    parsed: &httparse::Request<'_, '_>,
    route: impl FnOnce(&str) -> Option<&'c HandshakeConfig>,
) -> Result<Validated, Rejection> {
    let target = resource_name(parsed.path.unwrap_or_default()).ok_or(Rejection::new(
        400,
        "request target must be a path or an http(s)/ws(s) URI",
    ))?;
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| Rejection::new(400, "header value is not UTF-8"))?;
        headers.push((h.name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let method = parsed.method.unwrap_or_default().to_owned();
    let request = Request {
        method,
        path,
        query,
        headers,
    };
    if !has_token(&request, "upgrade", "websocket") {
        return Ok(Validated::Plain(request));
    }
    let config = route(&request.path).ok_or(Rejection::new(404, "no route serves this path"))?;
    if request.method != "GET" {
        return Err(Rejection::new(405, "only GET can open a WebSocket"));
    }
    if parsed.version != Some(1) {
        return Err(Rejection::new(400, "WebSocket needs HTTP/1.1"));
    }
    if request.header_values("host").next().is_none() {
        return Err(Rejection::new(400, "missing Host header"));
    }
    if !has_token(&request, "connection", "upgrade") {
        return Err(Rejection::new(400, "missing Connection: upgrade"));
    }
    let versions: Vec<&str> = request.header_values("sec-websocket-version").collect();
    if versions != ["13"] {
        return Err(Rejection::new(426, "unsupported Sec-WebSocket-Version, 13 expected"));
    }
    let key = match request.header_values("sec-websocket-key").collect::<Vec<_>>()[..] {
        [key] if BASE64.decode(key).is_ok_and(|k| k.len() == 16) => accept_key(key),
        _ => {
            return Err(Rejection::new(
                400,
                "Sec-WebSocket-Key must be one base64 value of 16 bytes",
            ));
        }
    };
    if !config.allowed_origins.is_empty() {
        let origin = request.header_values("origin").next().unwrap_or_default();
        if !config
            .allowed_origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        {
            return Err(Rejection::new(403, "origin not allowed"));
        }
    }

    let subprotocol = select_subprotocol(&request, &config.subprotocols);
    let deflate = config
        .deflate
        .as_ref()
        .and_then(|cfg| deflate::negotiate(request.header_values("sec-websocket-extensions"), cfg));

    let (deflate, extension) = deflate.unzip();
    Ok(Validated::Upgrade(Accepted {
        request,
        subprotocol,
        deflate,
        accept_key: key,
        extension,
    }))
}

/// The path-and-query of a request target in origin form (`/chat?x=1`) or absolute form
/// (`http://host/chat?x=1`, which RFC 7230 section 5.3.2 says servers must accept).
fn resource_name(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let (scheme, rest) = target.split_once("://")?;
    if !["http", "https", "ws", "wss"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme))
    {
        return None;
    }
    match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => Some(&rest[at..]),
        // `http://host` and `http://host?x` name the root resource.
        _ => Some("/"),
    }
}

/// Whether a comma-separated header named `name` holds `token`, case-insensitively.
fn has_token(request: &Request, name: &str, token: &str) -> bool {
    request
        .header_values(name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The first subprotocol offered by the client that the server supports.
fn select_subprotocol(request: &Request, supported: &[String]) -> Option<String> {
    request
        .offered_subprotocols()
        .find(|offered| supported.iter().any(|s| s == offered))
        .map(str::to_owned)
}

/// `Sec-WebSocket-Accept` for a client key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(extra: &str) -> String {
        format!(
            "GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn status_of(raw: &str, config: &HandshakeConfig) -> u16 {
        match accept(raw.as_bytes(), config) {
            Outcome::Rejected(r) => r.status,
            Outcome::Accepted { .. } => 101,
            Outcome::Plain { .. } => 200,
            Outcome::Incomplete => 0,
        }
    }

    #[test]
    fn computes_the_rfc_accept_key() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn accepts_a_valid_request_and_keeps_trailing_bytes() {
        let mut raw = request("").into_bytes();
        let head_len = raw.len();
        raw.extend_from_slice(&[0x81, 0x80]);
        let Outcome::Accepted { accepted, consumed } = accept(&raw, &HandshakeConfig::default()) else {
            panic!("not accepted");
        };
        assert_eq!(consumed, head_len);
        assert_eq!(accepted.request.path, "/chat");
        assert_eq!(accepted.request.query.as_deref(), Some("room=1"));
        let response = String::from_utf8(accepted.response()).unwrap();
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(response.ends_with("\r\n\r\n"));
        assert!(!response.contains("Extensions"));
    }

    #[test]
    fn accepts_absolute_form_targets() {
        assert_eq!(resource_name("/a?b"), Some("/a?b"));
        assert_eq!(resource_name("http://h:1/room?x=1"), Some("/room?x=1"));
        assert_eq!(resource_name("WSS://h/"), Some("/"));
        assert_eq!(resource_name("https://h"), Some("/"));
        assert_eq!(resource_name("ftp://h/x"), None);
        assert_eq!(resource_name("*"), None);
        assert_eq!(resource_name("room"), None);
    }

    #[test]
    fn waits_for_a_complete_head() {
        let raw = request("");
        for cut in 0..raw.len() - 1 {
            assert_eq!(
                accept(&raw.as_bytes()[..cut], &HandshakeConfig::default()),
                Outcome::Incomplete
            );
        }
    }

    #[test]
    fn header_tokens_are_case_insensitive_lists() {
        let raw = "GET / HTTP/1.1\r\nHost: h\r\nupgrade: WebSocket\r\nconnection: keep-alive, UPGRADE\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n";
        assert_eq!(status_of(raw, &HandshakeConfig::default()), 101);
    }

    #[test]
    fn rejects_bad_requests_with_the_right_status() {
        let config = HandshakeConfig::default();
        let good = request("");
        let cases: Vec<(String, u16)> = vec![
            (good.replace("GET", "POST"), 405),
            (good.replace("HTTP/1.1", "HTTP/1.0"), 400),
            // Without `Upgrade: websocket` it is a plain HTTP request, for the caller.
            (good.replace("Upgrade: websocket\r\n", ""), 200),
            (good.replace("Upgrade: websocket", "Upgrade: h2c"), 200),
            (good.replace("Connection: Upgrade", "Connection: close"), 400),
            (good.replace("Host: server.example.com\r\n", ""), 400),
            (good.replace(KEY, "c2hvcnQ="), 400),
            (good.replace(KEY, "not base64!"), 400),
            (good.replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), ""), 400),
            (request(&format!("Sec-WebSocket-Key: {KEY}\r\n")), 400),
            (good.replace("Version: 13", "Version: 8"), 426),
            (good.replace("Sec-WebSocket-Version: 13\r\n", ""), 426),
            ("garbage\r\n\r\n".into(), 400),
            (request(&"X-Filler: 0123456789\r\n".repeat(500)), 431),
            (request(&"X: y\r\n".repeat(MAX_HEADERS)), 431),
        ];
        for (raw, status) in cases {
            assert_eq!(status_of(&raw, &config), status, "{raw:?}");
        }
        assert_eq!(
            Rejection::new(426, "x").headers(),
            [("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")]
        );
        assert_eq!(Rejection::new(405, "x").headers(), [("Allow", "GET")]);
        assert!(Rejection::new(400, "x").headers().is_empty());
    }

    #[test]
    fn an_endless_head_is_rejected_once_past_the_limit() {
        let config = HandshakeConfig {
            max_request_bytes: 100,
            ..HandshakeConfig::default()
        };
        let raw = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(200));
        assert_eq!(status_of(&raw, &config), 431);
    }

    #[test]
    fn checks_the_origin_when_origins_are_configured() {
        let config = HandshakeConfig {
            allowed_origins: vec!["https://chat.example".into()],
            ..Default::default()
        };
        assert_eq!(status_of(&request("Origin: https://CHAT.example\r\n"), &config), 101);
        assert_eq!(status_of(&request("Origin: https://evil.example\r\n"), &config), 403);
        assert_eq!(status_of(&request(""), &config), 403);
        assert_eq!(
            status_of(
                &request("Origin: https://evil.example\r\n"),
                &HandshakeConfig::default()
            ),
            101
        );
    }

    #[test]
    fn a_routed_upgrade_uses_its_routes_rules_and_an_unrouted_one_gets_404_first() {
        let strict = HandshakeConfig {
            allowed_origins: vec!["https://chat.example".into()],
            ..Default::default()
        };
        let route = |path: &str| (path == "/chat").then_some(&strict);
        let status = |raw: &str| match accept_routed(raw.as_bytes(), MAX_REQUEST_BYTES, route) {
            Outcome::Rejected(r) => r.status,
            Outcome::Accepted { .. } => 101,
            Outcome::Plain { .. } => 200,
            Outcome::Incomplete => 0,
        };
        assert_eq!(status(&request("Origin: https://chat.example\r\n")), 101);
        assert_eq!(status(&request("Origin: https://evil.example\r\n")), 403);
        // 404 before the method, the version or the key are looked at.
        let elsewhere = "POST /other HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(status(elsewhere), 404);
        // Plain requests are not routed: the caller answers them (health, files).
        assert_eq!(status("GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"), 200);
    }

    #[test]
    fn plain_requests_are_handed_to_the_caller() {
        let raw = "HEAD /index.html?x HTTP/1.0\r\nHost: h\r\n\r\n";
        let Outcome::Plain { request, consumed } = accept(raw.as_bytes(), &HandshakeConfig::default()) else {
            panic!()
        };
        assert_eq!(consumed, raw.len());
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("HEAD", "/index.html")
        );
    }

    #[test]
    fn selects_the_first_offered_supported_subprotocol() {
        let config = HandshakeConfig {
            subprotocols: vec!["chat".into(), "superchat".into()],
            ..Default::default()
        };
        let raw = request("Sec-WebSocket-Protocol: soap, superchat\r\nSec-WebSocket-Protocol: chat\r\n");
        let Outcome::Accepted { accepted, .. } = accept(raw.as_bytes(), &config) else {
            panic!()
        };
        assert_eq!(accepted.subprotocol.as_deref(), Some("superchat"));
        assert!(
            String::from_utf8(accepted.response())
                .unwrap()
                .contains("Sec-WebSocket-Protocol: superchat\r\n")
        );
        let raw = request("Sec-WebSocket-Protocol: soap\r\n");
        let Outcome::Accepted { accepted, .. } = accept(raw.as_bytes(), &config) else {
            panic!()
        };
        assert_eq!(accepted.subprotocol, None);
    }

    #[test]
    fn the_application_may_choose_only_an_offered_subprotocol() {
        let raw = request("Sec-WebSocket-Protocol: v1, v2\r\n");
        let Outcome::Accepted { mut accepted, .. } = accept(raw.as_bytes(), &HandshakeConfig::default()) else {
            panic!()
        };
        assert_eq!(
            accepted.request.offered_subprotocols().collect::<Vec<_>>(),
            ["v1", "v2"]
        );
        assert_eq!(accepted.choose_subprotocol(Some("v3".into())), Err(NotOffered));
        accepted.choose_subprotocol(Some("v2".into())).unwrap();
        let response = String::from_utf8(accepted.response()).unwrap();
        assert!(response.contains("Sec-WebSocket-Protocol: v2\r\n"), "{response}");
        accepted.choose_subprotocol(None).unwrap();
        assert!(
            !String::from_utf8(accepted.response())
                .unwrap()
                .contains("Sec-WebSocket-Protocol")
        );
    }

    #[test]
    fn negotiates_deflate_only_when_enabled() {
        let raw = request("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
        let Outcome::Accepted { accepted, .. } = accept(raw.as_bytes(), &HandshakeConfig::default()) else {
            panic!()
        };
        assert!(accepted.deflate.is_some());
        assert!(
            String::from_utf8(accepted.response())
                .unwrap()
                .contains("Sec-WebSocket-Extensions: permessage-deflate\r\n")
        );
        let config = HandshakeConfig {
            deflate: None,
            ..Default::default()
        };
        let Outcome::Accepted { accepted, .. } = accept(raw.as_bytes(), &config) else {
            panic!()
        };
        assert!(accepted.deflate.is_none());
    }
}
