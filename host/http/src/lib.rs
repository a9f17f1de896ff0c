//! The one writer of the host's HTTP/1.1 responses, but for the `101 Switching Protocols`
//! that the WebSocket protocol writes itself: refused handshakes, an application's own
//! rejection, static files, the operator's endpoints. One table of status phrases, one
//! head layout, and every response closes its connection (`Connection: close`): the host
//! answers one request per connection that does not upgrade.

/// The reason phrase of a status the host sends.
pub fn phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A response head: the status line, `headers` (each a name and a value), the
/// `Content-Type` if given, `Content-Length: length`, `Connection: close`, the blank line.
pub fn head(status: u16, headers: &[(&str, &str)], content_type: Option<&str>, length: u64) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", phrase(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str(&format!("Content-Length: {length}\r\nConnection: close\r\n\r\n"));
    head.into_bytes()
}

/// A whole response: [`head`] and `body` (which a `HEAD` request leaves out:
/// `with_body` false, the length still announced).
pub fn response(status: u16, headers: &[(&str, &str)], content_type: &str, body: &[u8], with_body: bool) -> Vec<u8> {
    let mut response = head(status, headers, Some(content_type), body.len() as u64);
    if with_body {
        response.extend_from_slice(body);
    }
    response
}

/// A short plain-text answer: `text` and a line end.
pub fn text(status: u16, headers: &[(&str, &str)], text: &str) -> Vec<u8> {
    response(
        status,
        headers,
        "text/plain; charset=utf-8",
        format!("{text}\n").as_bytes(),
        true,
    )
}

/// An error answer: the status and, if `detailed`, what was wrong (else only the status's
/// phrase: a production server tells a client nothing of its insides).
pub fn error(status: u16, headers: &[(&str, &str)], detail: &str, detailed: bool) -> Vec<u8> {
    text(status, headers, if detailed { detail } else { phrase(status) })
}

/// Largest body of an application's own rejection ([`custom`]).
pub const MAX_CUSTOM_BODY: usize = 64 << 10;

/// Most headers an application's own rejection may add.
pub const MAX_CUSTOM_HEADERS: usize = 32;

/// Largest total of an application's own response headers (names, values and their
/// separators): what a client's or a proxy's header buffer takes without fuss.
pub const MAX_CUSTOM_HEADER_BYTES: usize = 8 << 10;

/// Why an application's response cannot be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    /// Not a status from 400 to 599.
    #[error("status {0} is not an HTTP error (400-599)")]
    Status(u16),
    /// A header name that is not a token, or a value with a control character.
    #[error("invalid response header")]
    Header,
    /// A body over [`MAX_CUSTOM_BODY`].
    #[error("response body over 64 KiB")]
    Body,
    /// More than [`MAX_CUSTOM_HEADERS`] headers, or more than [`MAX_CUSTOM_HEADER_BYTES`] of them.
    #[error("response headers over 32, or over 8 KiB")]
    Headers,
}

/// An HTTP error response an application chose to refuse a handshake with: its status
/// (400-599), extra headers and body; the framing headers (`content-length`,
/// `connection`, `transfer-encoding`) are the server's, and such headers given here
/// are dropped. Names must be tokens and values free of control characters: nothing an
/// application gives can start a header of its own.
pub fn custom(status: u16, headers: &[(String, String)], body: &[u8]) -> Result<Vec<u8>, BadResponse> {
    if !(400..=599).contains(&status) {
        return Err(BadResponse::Status(status));
    }
    if body.len() > MAX_CUSTOM_BODY {
        return Err(BadResponse::Body);
    }
    let header_bytes: usize = headers.iter().map(|(name, value)| name.len() + value.len() + 4).sum();
    if headers.len() > MAX_CUSTOM_HEADERS || header_bytes > MAX_CUSTOM_HEADER_BYTES {
        return Err(BadResponse::Headers);
    }
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let mut kept = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(token) || value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(BadResponse::Header);
        }
        let framing = ["content-length", "connection", "transfer-encoding"]
            .iter()
            .any(|reserved| name.eq_ignore_ascii_case(reserved));
        if !framing {
            kept.push((name.as_str(), value.as_str()));
        }
    }
    let mut response = head(status, &kept, None, body.len() as u64);
    response.extend_from_slice(body);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_have_one_layout() {
        let answer = String::from_utf8(text(429, &[("Retry-After", "1")], "slow down")).unwrap();
        assert_eq!(
            answer,
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 10\r\nConnection: close\r\n\r\nslow down\n"
        );
        let terse = String::from_utf8(error(503, &[], "the plugin is behind", false)).unwrap();
        assert!(terse.ends_with("\r\n\r\nService Unavailable\n"), "{terse}");
        let detailed = String::from_utf8(error(503, &[], "the plugin is behind", true)).unwrap();
        assert!(detailed.ends_with("\r\n\r\nthe plugin is behind\n"), "{detailed}");
        let head_only = response(200, &[], "text/plain", b"ok\n", false);
        assert!(
            String::from_utf8(head_only)
                .unwrap()
                .ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n")
        );
        assert_eq!(phrase(599), "Error");
    }

    #[test]
    fn a_custom_rejection_is_checked_and_framed_by_the_server() {
        let headers = vec![
            ("WWW-Authenticate".to_owned(), "Bearer".to_owned()),
            ("Content-Length".to_owned(), "999".to_owned()),
        ];
        let response = String::from_utf8(custom(401, &headers, b"who are you?").unwrap()).unwrap();
        assert!(response.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{response}");
        assert!(response.contains("WWW-Authenticate: Bearer\r\n"));
        assert!(response.contains("Content-Length: 12\r\n") && !response.contains("999"));
        assert!(response.ends_with("\r\n\r\nwho are you?"));

        assert_eq!(custom(101, &[], b""), Err(BadResponse::Status(101)));
        assert_eq!(custom(200, &[], b""), Err(BadResponse::Status(200)));
        let split = vec![("X".to_owned(), "a\r\nSet-Cookie: evil".to_owned())];
        assert_eq!(custom(400, &split, b""), Err(BadResponse::Header));
        let bad_name = vec![("X Y".to_owned(), "v".to_owned())];
        assert_eq!(custom(400, &bad_name, b""), Err(BadResponse::Header));
        assert_eq!(custom(400, &[], &vec![0; MAX_CUSTOM_BODY + 1]), Err(BadResponse::Body));
        let many: Vec<(String, String)> = (0..=MAX_CUSTOM_HEADERS)
            .map(|i| (format!("x-{i}"), "v".into()))
            .collect();
        assert_eq!(custom(400, &many, b""), Err(BadResponse::Headers));
        assert!(custom(400, &many[1..], b"").is_ok());
        let long = vec![("x".to_owned(), "v".repeat(MAX_CUSTOM_HEADER_BYTES))];
        assert_eq!(custom(400, &long, b""), Err(BadResponse::Headers));
        let fits = vec![("x".to_owned(), "v".repeat(MAX_CUSTOM_HEADER_BYTES - 5))];
        assert!(custom(400, &fits, b"").is_ok());
    }
}
