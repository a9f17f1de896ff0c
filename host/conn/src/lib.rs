//! The host's vocabulary for connections, shared by the plugin runtime, the server and
//! the cluster, and owned by none of them: ids, what is sent, what is known of a
//! connection, why a call about one did nothing, and close codes an endpoint may send.

use wsplug_ws::close;

/// Identifies a connection; the same id the plugin sees.
pub type ConnId = u64;

/// Largest attachment a connection may carry, in bytes.
pub const MAX_ATTACHMENT: usize = 16 << 10;

/// A message a plugin asks the host to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// A text message.
    Text(TextBytes),
    /// A binary message.
    Binary(bytes::Bytes),
}

impl Outgoing {
    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Outgoing::Text(text) => text.as_str().len(),
            Outgoing::Binary(data) => data.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// UTF-8 text in shared, cheaply cloned bytes (one copy serves every recipient of a broadcast).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextBytes(bytes::Bytes);

impl From<String> for TextBytes {
    fn from(text: String) -> Self {
        Self(bytes::Bytes::from(text))
    }
}

impl From<&'static str> for TextBytes {
    fn from(text: &'static str) -> Self {
        Self(bytes::Bytes::from_static(text.as_bytes()))
    }
}

impl TryFrom<bytes::Bytes> for TextBytes {
    type Error = std::str::Utf8Error;

    /// Checks that `bytes` are UTF-8 and keeps them without a copy.
    fn try_from(bytes: bytes::Bytes) -> Result<Self, Self::Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Self(bytes))
    }
}

impl TextBytes {
    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: only built from `String`, `&str` or checked bytes (see the `From` and
        // `TryFrom` impls), never mutated.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

/// Why a host call about a connection did nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The connection is closed, closing, or never existed.
    #[error("the connection is gone")]
    Gone,
    /// A close code an endpoint may not send.
    #[error("a close code an endpoint may not send")]
    InvalidCode,
    /// A close reason longer than 123 bytes.
    #[error("a close reason over 123 bytes")]
    ReasonTooLong,
    /// An attachment over [`MAX_ATTACHMENT`], a group name over the host's bound, or
    /// either past the bound of what the host's connections hold in all.
    #[error("too large")]
    TooLarge,
    /// A join past the bound of groups per connection.
    #[error("too many groups")]
    TooManyGroups,
    /// More pending timers than the plugin may have.
    #[error("too many timers")]
    TooManyTimers,
    /// A timer's delay or repetition out of range.
    #[error("a timer's delay or repetition out of range")]
    InvalidDuration,
}

/// A close code an endpoint may send (RFC 6455 section 7.4: 1000-1003, 1007-1014 and
/// 3000-4999), checked once where it comes in: from a plugin, or from another host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseCode(u16);

impl CloseCode {
    /// 1011: the server met a condition it did not expect (a plugin trapped).
    pub const INTERNAL_ERROR: CloseCode = CloseCode(close::INTERNAL_ERROR);

    /// 1012: the service restarts; the client may reconnect.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);

    /// The code, if an endpoint may send it.
    pub fn new(code: u16) -> Option<Self> {
        close::is_sendable(code).then_some(Self(code))
    }

    /// The code.
    pub fn get(self) -> u16 {
        self.0
    }
}

/// What the host knows about a connection, from its handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The connection's id.
    pub id: ConnId,
    /// Peer address, `ip:port`.
    pub remote_address: String,
    /// Request path.
    pub path: String,
    /// Query string, without `?`.
    pub query: Option<String>,
    /// Selected subprotocol.
    pub subprotocol: Option<String>,
    /// Request headers, names lower-case.
    pub headers: Headers,
}

/// Request headers, names lower-case, in order, in one allocation: every connection keeps
/// its handshake's headers all its life (for `info`), and as a vector of strings they
/// took 2 allocations per header (about 0.4 KiB for a plain WebSocket client).
/// Each header is its name's length (4 bytes, little-endian), the name, the value's
/// length, the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Box<[u8]>);

impl Headers {
    /// The headers, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut rest = &self.0[..];
        let mut next_str = move || -> Option<&str> {
            let (len, after) = rest.split_first_chunk::<4>()?;
            let (text, after) = after.split_at(u32::from_le_bytes(*len) as usize);
            rest = after;
            // Built from `&str`s only (see `From`), and split where they ended.
            Some(std::str::from_utf8(text).expect("headers hold UTF-8"))
        };
        std::iter::from_fn(move || Some((next_str()?, next_str()?)))
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The headers as owned pairs (for a plugin's `info`).
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect()
    }
}

impl<S: AsRef<str>> FromIterator<(S, S)> for Headers {
    fn from_iter<I: IntoIterator<Item = (S, S)>>(headers: I) -> Self {
        let mut bytes = Vec::new();
        for (name, value) in headers {
            for text in [name.as_ref(), value.as_ref()] {
                let len = u32::try_from(text.len()).expect("a header under 4 GiB");
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes.extend_from_slice(text.as_bytes());
            }
        }
        Self(bytes.into_boxed_slice())
    }
}

impl From<Vec<(String, String)>> for Headers {
    fn from(headers: Vec<(String, String)>) -> Self {
        headers.into_iter().collect()
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{CloseCode, Headers};

    #[test]
    fn headers_keep_every_pair_in_order_in_one_allocation() {
        let pairs = vec![
            ("host".to_owned(), "example.com".to_owned()),
            ("x-empty".to_owned(), String::new()),
            ("x-utf8".to_owned(), "héllo, 世界".to_owned()),
            ("host".to_owned(), "again".to_owned()),
        ];
        let headers = Headers::from(pairs.clone());
        assert_eq!(headers.to_vec(), pairs);
        assert_eq!(headers.len(), 4);
        assert!(!headers.is_empty());
        let empty = Headers::default();
        assert_eq!((empty.is_empty(), empty.len(), empty.to_vec()), (true, 0, vec![]));
        assert_eq!(
            format!("{:?}", Headers::from(vec![("a".into(), "b".into())])),
            r#"[("a", "b")]"#
        );
    }

    #[test]
    fn close_codes_are_those_an_endpoint_may_send() {
        for code in [1000, 1003, 1007, 1014, 3000, 4999] {
            assert_eq!(CloseCode::new(code).map(CloseCode::get), Some(code));
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(CloseCode::new(code), None, "{code}");
        }
    }
}
