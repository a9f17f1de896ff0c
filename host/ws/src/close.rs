//! Close codes (RFC 6455 section 7.4), close-frame payloads, and the protocol errors
//! that end a connection with a given code.

/// Normal closure.
pub const NORMAL: u16 = 1000;
/// The endpoint is going away (server shutdown, page navigation).
pub const GOING_AWAY: u16 = 1001;
/// The peer broke the protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// A close frame without a status code (never sent on the wire).
pub const NO_STATUS: u16 = 1005;
/// The connection dropped without a close frame (never sent on the wire).
pub const ABNORMAL: u16 = 1006;
/// A message's data did not match its type (bad UTF-8 in a text message).
pub const INVALID_DATA: u16 = 1007;
/// The endpoint got a message (or behaviour) that violates its policy; the server
/// sends it to a reader too slow for its outbound bound.
pub const POLICY_VIOLATION: u16 = 1008;
/// A message was too big to process.
pub const TOO_BIG: u16 = 1009;
/// The server hit an unexpected condition (e.g. the plugin trapped).
pub const INTERNAL_ERROR: u16 = 1011;

/// Whether an endpoint may put `code` in a close frame.
///
/// 1000-1003 and 1007-1014 are defined for use on the wire (1012-1014 were
/// registered with IANA after RFC 6455), 3000-3999 are for libraries and
/// frameworks, 4000-4999 for applications. 1004-1006 and 1015 are reserved or
/// must never be sent; everything else is unassigned.
pub fn is_sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The longest close reason: a control payload is at most 125 bytes, two of which are the code.
pub const MAX_REASON_LEN: usize = 123;

/// A violation that fails the connection: the close code to send and a short reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close code {code})")]
pub struct ProtocolError {
    /// Close code sent to the peer.
    pub code: u16,
    /// Short, static explanation, also sent as the close reason.
    pub reason: &'static str,
}

impl ProtocolError {
    /// A 1002 protocol error.
    pub const fn protocol(reason: &'static str) -> Self {
        Self {
            code: PROTOCOL_ERROR,
            reason,
        }
    }

    /// A 1007 invalid-payload error.
    pub const fn invalid_data(reason: &'static str) -> Self {
        Self {
            code: INVALID_DATA,
            reason,
        }
    }

    /// A 1009 message-too-big error.
    pub const fn too_big(reason: &'static str) -> Self {
        Self { code: TOO_BIG, reason }
    }
}

/// Parses a received close frame's payload into its code and reason.
///
/// An empty payload means "no status" and yields [`NO_STATUS`]. A one-byte payload or a
/// code an endpoint may not send is a 1002 error; a reason that is not UTF-8 is 1007.
pub fn parse_payload(payload: &[u8]) -> Result<(u16, String), ProtocolError> {
    match payload {
        [] => Ok((NO_STATUS, String::new())),
        [_] => Err(ProtocolError::protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_sendable(code) {
                return Err(ProtocolError::protocol("close frame with an invalid code"));
            }
            let reason =
                std::str::from_utf8(reason).map_err(|_| ProtocolError::invalid_data("close reason is not UTF-8"))?;
            Ok((code, reason.to_owned()))
        }
    }
}

/// Builds a close payload. `NO_STATUS` gives an empty payload; a reason longer than
/// [`MAX_REASON_LEN`] is cut at a character boundary.
pub fn encode_payload(code: u16, reason: &str) -> Vec<u8> {
    if code == NO_STATUS {
        return Vec::new();
    }
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendable_codes_follow_rfc_and_iana() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999,
        ] {
            assert!(is_sendable(code), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(!is_sendable(code), "{code}");
        }
    }

    #[test]
    fn parses_payloads() {
        assert_eq!(parse_payload(&[]).unwrap(), (NO_STATUS, String::new()));
        assert_eq!(parse_payload(&[0x03, 0xE8]).unwrap(), (1000, String::new()));
        assert_eq!(parse_payload(b"\x0f\xa0bye").unwrap(), (4000, "bye".into()));
        assert_eq!(parse_payload(&[0x03]).unwrap_err().code, PROTOCOL_ERROR);
        assert_eq!(parse_payload(&[0x03, 0xED]).unwrap_err().code, PROTOCOL_ERROR); // 1005
        assert_eq!(parse_payload(&[0x03, 0xE8, 0xFF]).unwrap_err().code, INVALID_DATA);
    }

    #[test]
    fn encodes_payloads_within_control_frame_limit() {
        assert_eq!(encode_payload(NO_STATUS, "ignored"), Vec::<u8>::new());
        assert_eq!(encode_payload(1000, "ok"), b"\x03\xe8ok");
        let long = "é".repeat(100); // 200 bytes
        let payload = encode_payload(1000, &long);
        assert!(payload.len() <= 125);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }
}
