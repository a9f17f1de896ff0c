//! `handshake::accept` on arbitrary bytes and on edited valid upgrade requests.
//!
//! Input layout: byte 0 picks the configuration (bit 0 deflate on, bits 1-3 its server
//! window, bit 4 subprotocols, bit 5 allowed origins, bit 6 a small head limit) and,
//! with bit 7, structured mode; byte 1 more configuration. Raw mode: the rest is the
//! request. Structured mode: the rest is a list of edits ([`edit`]) to a valid request.
//!
//! Checks: no panic; an `Accepted` response is one well-formed HTTP/1.1 101 response
//! with exactly the headers RFC 6455 section 4.2.2 asks for, the right accept key, a
//! subprotocol both offered and supported, and the extension `deflate::negotiate`
//! gives; a rejection's response is well formed with a matching Content-Length; an
//! outcome with `consumed` bytes is the same on those bytes alone. An accepted request's
//! response, with each subprotocol the application may choose instead, names exactly
//! that one; one not offered is refused. Every input is also read as an application's
//! rejection (`wsplug_http::custom`): what is sent is one response with the status, the
//! given headers (none added, none injected) and the body. Rejections are written the
//! way the host writes them (`wsplug_http::error`).

use wsplug_ws::deflate::{self, DeflateConfig};
use wsplug_ws::handshake::{self, Accepted, HandshakeConfig, Outcome, Rejection};

use crate::Reader;

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const STRUCTURED: u8 = 0x80;

pub fn config(c: u8, c2: u8) -> HandshakeConfig {
    HandshakeConfig {
        max_request_bytes: if c & 0x40 != 0 { 100 + usize::from(c2) } else { 8 * 1024 },
        subprotocols: if c & 0x10 != 0 {
            vec!["chat".into(), "superchat".into()]
        } else {
            Vec::new()
        },
        deflate: (c & 1 != 0).then(|| DeflateConfig {
            server_max_window_bits: 9 + ((c >> 1) & 7).min(6),
            client_max_window_bits: 8 + (c2 & 7),
            level: 6,
        }),
        allowed_origins: if c & 0x20 != 0 {
            vec!["https://chat.example".into()]
        } else {
            Vec::new()
        },
    }
}

pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let c = r.byte_or(0);
    let c2 = r.byte_or(0);
    let config = config(c, c2);
    if c & STRUCTURED != 0 {
        check(&structured(&mut r), &config);
    } else {
        check(r.rest(), &config);
    }
    check_custom_response(data);
}

/// Reads `data` as a rejection: a status, then a body and `name:value` headers split by
/// NUL bytes.
fn check_custom_response(data: &[u8]) {
    let status = u16::from_le_bytes([data.first().copied().unwrap_or(0), data.get(1).copied().unwrap_or(0)]) % 700;
    let mut parts = data.get(2..).unwrap_or_default().split(|&b| b == 0);
    let body = parts.next().unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .filter_map(|part| {
            let text = String::from_utf8_lossy(part);
            let (name, value) = text.split_once(':')?;
            Some((name.to_owned(), value.to_owned()))
        })
        .take(8)
        .collect();
    let Ok(response) = wsplug_http::custom(status, &headers, body) else {
        return;
    };
    assert!((400..=599).contains(&status), "sent status {status}");
    let (code, len, parsed) = parse_response(&response);
    assert_eq!(code, status);
    assert_eq!(&response[len..], body, "the body is not what was given");
    let framing = |name: &str| ["content-length", "connection", "transfer-encoding"].contains(&name);
    let kept = headers
        .iter()
        .filter(|(name, _)| !framing(&name.to_ascii_lowercase()))
        .count();
    assert_eq!(
        parsed.len(),
        kept + 2,
        "headers added or lost: {parsed:?} from {headers:?}"
    );
    let length: Vec<&String> = parsed
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(length, [&body.len().to_string()]);
}

/// An accepted request with every subprotocol an application may choose instead of the
/// configured one, and one that was not offered.
fn check_choices(accepted: &Accepted) {
    let offered: Vec<String> = accepted.request.offered_subprotocols().map(str::to_owned).collect();
    let stranger = Some("not-offered".to_owned()).filter(|s| !offered.contains(s));
    for choice in offered.iter().cloned().map(Some).chain([None, stranger]) {
        let mut chosen = accepted.clone();
        match chosen.choose_subprotocol(choice.clone()) {
            Ok(()) => {
                let response = chosen.response();
                let (status, len, headers) = parse_response(&response);
                assert_eq!((status, len), (101, response.len()));
                let named: Vec<&str> = headers
                    .iter()
                    .filter(|(n, _)| n == "sec-websocket-protocol")
                    .map(|(_, v)| v.as_str())
                    .collect();
                assert_eq!(named, choice.as_deref().into_iter().collect::<Vec<_>>());
            }
            Err(_) => assert!(
                choice.as_ref().is_some_and(|c| !offered.contains(c)),
                "{choice:?} refused though offered"
            ),
        }
    }
}

/// A request being edited.
struct Request {
    method: &'static str,
    target: &'static str,
    version: &'static str,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    newline: &'static str,
    trailing: Vec<u8>,
}

const METHODS: [&str; 4] = ["GET", "get", "POST", "HEAD"];
const TARGETS: [&str; 8] = [
    "/chat?room=1",
    "/",
    "http://h/chat",
    "ws://h",
    "*",
    "chat",
    "/a?b?c",
    "HTTPS://h:1?x",
];
const VERSIONS: [&str; 4] = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 "];
const NAMES: [&str; 10] = [
    "Host",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol",
    "Origin",
    "X-Other",
    "Content-Length",
];
const VALUES: [&str; 16] = [
    "websocket",
    "Upgrade",
    "keep-alive, upgrade",
    "13",
    "8, 13",
    "permessage-deflate; client_max_window_bits",
    "permessage-deflate; server_max_window_bits=10; server_no_context_takeover",
    "x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover",
    "permessage-deflate; server_max_window_bits=\"8\"; client_max_window_bits=9",
    "chat, superchat",
    "soap,chat",
    "https://chat.example",
    KEY,
    "AAAAAAAAAAAAAAAAAAAAAA==",
    "",
    "h2c",
];

/// Applies edits, each one byte (its low three bits the kind) and its arguments.
fn structured(r: &mut Reader<'_>) -> Vec<u8> {
    let mut req = Request {
        method: "GET",
        target: "/chat?room=1",
        version: "HTTP/1.1",
        headers: [
            ("Host", "server.example.com"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect(),
        newline: "\r\n",
        trailing: Vec::new(),
    };
    while let Some(e) = r.byte() {
        edit(&mut req, e, r);
    }
    let mut out = format!("{} {} {}{}", req.method, req.target, req.version, req.newline).into_bytes();
    for (name, value) in &req.headers {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(req.newline.as_bytes());
    }
    out.extend_from_slice(req.newline.as_bytes());
    out.extend_from_slice(&req.trailing);
    out
}

fn edit(req: &mut Request, e: u8, r: &mut Reader<'_>) {
    let arg = usize::from(e >> 3);
    let len = req.headers.len();
    match e & 7 {
        // Remove a header.
        0 if len > 0 => {
            req.headers.remove(arg % len);
        }
        // Repeat a header.
        1 if len > 0 => {
            let h = req.headers[arg % len].clone();
            req.headers.push(h);
        }
        // Replace a header's value with raw bytes.
        2 if len > 0 => {
            let n = usize::from(r.byte_or(0));
            req.headers[arg % len].1 = r.take(n).to_vec();
        }
        // Add a header with a known name and value.
        3 => {
            let v = usize::from(r.byte_or(0));
            req.headers
                .push((NAMES[arg % NAMES.len()].into(), VALUES[v % VALUES.len()].into()));
        }
        // Change a header name's case, or pad its value.
        4 if len > 0 => {
            let (name, value) = &mut req.headers[arg % len];
            match r.byte_or(0) % 4 {
                0 => name.make_ascii_uppercase(),
                1 => name.make_ascii_lowercase(),
                2 => drop(value.splice(0..0, *b" \t")),
                _ => value.extend_from_slice(b" \t"),
            };
        }
        // Another method, target or version.
        5 => match arg % 3 {
            0 => req.method = METHODS[usize::from(r.byte_or(0)) % METHODS.len()],
            1 => req.target = TARGETS[usize::from(r.byte_or(0)) % TARGETS.len()],
            _ => req.version = VERSIONS[usize::from(r.byte_or(0)) % VERSIONS.len()],
        },
        // Bare LF line endings, or bytes after the head (the client's first frames).
        6 => {
            if arg % 2 == 0 {
                req.newline = "\n";
            } else {
                let n = usize::from(r.byte_or(0));
                req.trailing.extend_from_slice(r.take(n));
            }
        }
        // Append raw bytes to a header's value.
        _ if len > 0 => {
            let n = usize::from(r.byte_or(0));
            let bytes = r.take(n);
            req.headers[arg % len].1.extend_from_slice(bytes);
        }
        _ => {}
    }
}

pub fn check(buf: &[u8], config: &HandshakeConfig) {
    let outcome = handshake::accept(buf, config);
    match &outcome {
        Outcome::Incomplete => {
            assert!(buf.len() <= config.max_request_bytes, "incomplete past the head limit");
        }
        Outcome::Accepted { accepted, consumed } => {
            assert!(*consumed <= buf.len() && *consumed <= config.max_request_bytes);
            check_accepted(accepted, config);
            check_choices(accepted);
            assert_eq!(
                handshake::accept(&buf[..*consumed], config),
                outcome,
                "bytes after the head changed the outcome"
            );
        }
        Outcome::Plain { request, consumed } => {
            assert!(*consumed <= buf.len() && *consumed <= config.max_request_bytes);
            assert!(!request.method.is_empty());
            assert!(request.path.starts_with('/'), "path {:?}", request.path);
            assert_eq!(
                handshake::accept(&buf[..*consumed], config),
                outcome,
                "bytes after the head changed the outcome"
            );
        }
        Outcome::Rejected(rejection) => check_rejection(rejection),
    }
}

/// Parses a whole response head; returns the status and the headers, names lower-cased.
fn parse_response(response: &[u8]) -> (u16, usize, Vec<(String, String)>) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(response) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!(
            "response does not parse: {other:?}: {:?}",
            String::from_utf8_lossy(response)
        ),
    };
    assert_eq!(parsed.version, Some(1));
    let headers = parsed
        .headers
        .iter()
        .map(|h| {
            let value = std::str::from_utf8(h.value).expect("header value is UTF-8");
            (h.name.to_ascii_lowercase(), value.to_owned())
        })
        .collect();
    (parsed.code.expect("a status"), len, headers)
}

fn check_accepted(accepted: &Accepted, config: &HandshakeConfig) {
    let response = accepted.response();
    let response = std::str::from_utf8(&response).expect("response is UTF-8");
    assert!(response.is_ascii(), "response is not ASCII: {response:?}");
    assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(response.ends_with("\r\n\r\n"));
    assert_eq!(response.matches("\r\n\r\n").count(), 1, "{response:?}");
    assert_eq!(
        response.matches('\n').count(),
        response.matches("\r\n").count(),
        "bare LF: {response:?}"
    );
    assert_eq!(
        response.matches('\r').count(),
        response.matches("\r\n").count(),
        "bare CR: {response:?}"
    );
    let (status, len, headers) = parse_response(response.as_bytes());
    assert_eq!((status, len), (101, response.len()));
    let value = |name: &str| {
        let values: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(values.len() <= 1, "{name} repeated: {response:?}");
        values.first().copied()
    };
    for (name, _) in &headers {
        assert!(
            matches!(
                name.as_str(),
                "upgrade"
                    | "connection"
                    | "sec-websocket-accept"
                    | "sec-websocket-protocol"
                    | "sec-websocket-extensions"
            ),
            "unexpected header {name}: {response:?}"
        );
    }
    assert_eq!(value("upgrade"), Some("websocket"));
    assert_eq!(value("connection"), Some("Upgrade"));

    let request = &accepted.request;
    assert_eq!(request.method, "GET");
    assert!(
        request.path.starts_with('/') && !request.path.contains('?'),
        "path {:?}",
        request.path
    );
    let tokens = |name: &str| -> Vec<String> {
        request
            .header_values(name)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect()
    };
    assert!(tokens("upgrade").iter().any(|t| t == "websocket"));
    assert!(tokens("connection").iter().any(|t| t == "upgrade"));
    assert!(request.header_values("host").next().is_some());
    assert_eq!(
        request.header_values("sec-websocket-version").collect::<Vec<_>>(),
        ["13"]
    );
    let keys: Vec<&str> = request.header_values("sec-websocket-key").collect();
    assert_eq!(keys.len(), 1, "one key");
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(keys[0])
        .expect("key is base64");
    assert_eq!(key.len(), 16);
    let accept = value("sec-websocket-accept").expect("Sec-WebSocket-Accept");
    assert_eq!(accept, handshake::accept_key(keys[0]));
    assert_eq!(accept.len(), 28);

    if !config.allowed_origins.is_empty() {
        let origin = request.header_values("origin").next().unwrap_or_default();
        assert!(
            config.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin)),
            "origin {origin:?}"
        );
    }

    assert_eq!(value("sec-websocket-protocol"), accepted.subprotocol.as_deref());
    if let Some(protocol) = &accepted.subprotocol {
        assert!(
            config.subprotocols.contains(protocol),
            "unsupported subprotocol {protocol:?}"
        );
        let offered: Vec<&str> = request
            .header_values("sec-websocket-protocol")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        assert!(
            offered.contains(&protocol.as_str()),
            "subprotocol {protocol:?} was not offered"
        );
    }

    let negotiated = config
        .deflate
        .as_ref()
        .and_then(|cfg| deflate::negotiate(request.header_values("sec-websocket-extensions"), cfg));
    assert_eq!(accepted.deflate, negotiated.as_ref().map(|(p, _)| *p));
    assert_eq!(
        value("sec-websocket-extensions"),
        negotiated.as_ref().map(|(_, v)| v.as_str())
    );
    if let Some(cfg) = &config.deflate {
        let offers: Vec<String> = request
            .header_values("sec-websocket-extensions")
            .map(str::to_owned)
            .collect();
        crate::negotiate::check(offers.iter().map(String::as_str), cfg);
    }
}

fn check_rejection(rejection: &Rejection) {
    assert!(
        matches!(rejection.status, 400 | 403 | 405 | 426 | 431),
        "status {}",
        rejection.status
    );
    for detailed in [true, false] {
        let response = wsplug_http::error(rejection.status, rejection.headers(), rejection.detail, detailed);
        let (status, len, headers) = parse_response(&response);
        assert_eq!(status, rejection.status);
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .expect("Content-Length")
            .1
            .parse()
            .expect("a number");
        assert_eq!(len + length, response.len(), "Content-Length does not match the body");
        assert!(headers.iter().any(|(n, v)| n == "connection" && v == "close"));
        assert!(std::str::from_utf8(&response).is_ok());
    }
}
