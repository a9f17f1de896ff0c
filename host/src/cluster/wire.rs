//! What hosts of a cluster tell each other through Redis, as bytes: plain functions,
//! no I/O, so that a malformed or hostile message is an error value and never a panic.
//!
//! Every message is an [`Envelope`]: the sending host's number and incarnation, a
//! sequence number (a receiver drops what it has seen), and a [`Body`]. Integers are
//! little-endian; strings and byte strings are a `u32` length, then the bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::plugin::{ConnId, ConnectionInfo, Outgoing, TextBytes};

/// Version of the encoding, the first byte of every message.
const VERSION: u8 = 1;

/// A host's number in its cluster (part of every connection id it hands out).
pub type HostNumber = u16;

/// One message from one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The sending host.
    pub origin: HostNumber,
    /// The sending host's incarnation: random per process, so that a host that
    /// restarted with the same number is told apart from its predecessor.
    pub incarnation: u64,
    /// Increases by one per message the incarnation sends.
    pub seq: u64,
    /// What it says.
    pub body: Body,
}

/// An open connection of the sending host, as the other hosts mirror it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The connection.
    pub conn: ConnId,
    /// Its attachment.
    pub attachment: Option<Bytes>,
    /// The groups it is in.
    pub groups: Vec<String>,
}

/// What a host tells the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// The sender (re)joined: these are all its open connections; every other host
    /// answers with its [`Body::State`].
    Hello(Vec<Member>),
    /// All the sender's open connections, replacing what the receiver knew of them.
    State(Vec<Member>),
    /// The sender is alive (sent every heartbeat interval).
    Heartbeat,
    /// The sender is leaving the cluster (shutting down).
    Bye,
    /// A connection opened (the plugin had its `on-open`).
    Opened(Member),
    /// A connection closed.
    Closed(ConnId),
    /// A connection joined a group.
    Joined(ConnId, String),
    /// A connection left a group.
    Left(ConnId, String),
    /// A connection's attachment changed.
    Attached(ConnId, Option<Bytes>),
    /// Deliver to every open connection of the receiver but `except`.
    Broadcast {
        /// The message.
        message: Outgoing,
        /// The connection left out.
        except: Option<ConnId>,
    },
    /// Deliver to every member of `group` on the receiver but `except`.
    Publish {
        /// The group.
        group: String,
        /// The message.
        message: Outgoing,
        /// The connection left out.
        except: Option<ConnId>,
    },
    /// Deliver to one connection of the receiver.
    Send(ConnId, Outgoing),
    /// Start closing one connection of the receiver.
    Close(ConnId, u16, String),
}

/// Why bytes are not a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message ends early.
    #[error("truncated message")]
    Truncated,
    /// A version this host does not speak.
    #[error("unknown encoding version {0}")]
    Version(u8),
    /// A tag no body has.
    #[error("unknown message kind {0}")]
    Kind(u8),
    /// Text that is not UTF-8.
    #[error("text is not UTF-8")]
    Utf8,
    /// Bytes after the end of the message.
    #[error("trailing bytes")]
    Trailing,
}

const HELLO: u8 = 1;
const STATE: u8 = 2;
const HEARTBEAT: u8 = 3;
const BYE: u8 = 4;
const OPENED: u8 = 5;
const CLOSED: u8 = 6;
const JOINED: u8 = 7;
const LEFT: u8 = 8;
const ATTACHED: u8 = 9;
const BROADCAST: u8 = 10;
const PUBLISH: u8 = 11;
const SEND: u8 = 12;
const CLOSE: u8 = 13;

/// The sender of a message, read without decoding the rest: `(origin, incarnation)`.
/// A host skips its own messages, which Redis sends back to it, with this.
pub fn sender_of(bytes: &[u8]) -> Option<(HostNumber, u64)> {
    match bytes {
        [VERSION, o0, o1, rest @ ..] if rest.len() >= 8 => {
            let incarnation = u64::from_le_bytes(rest[..8].try_into().ok()?);
            Some((u16::from_le_bytes([*o0, *o1]), incarnation))
        }
        _ => None,
    }
}

impl Envelope {
    /// The message as bytes.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(32 + self.body.payload_len());
        out.put_u8(VERSION);
        out.put_u16_le(self.origin);
        out.put_u64_le(self.incarnation);
        out.put_u64_le(self.seq);
        match &self.body {
            Body::Hello(members) => put_members(&mut out, HELLO, members),
            Body::State(members) => put_members(&mut out, STATE, members),
            Body::Heartbeat => out.put_u8(HEARTBEAT),
            Body::Bye => out.put_u8(BYE),
            Body::Opened(member) => {
                out.put_u8(OPENED);
                put_member(&mut out, member);
            }
            Body::Closed(conn) => {
                out.put_u8(CLOSED);
                out.put_u64_le(*conn);
            }
            Body::Joined(conn, group) | Body::Left(conn, group) => {
                out.put_u8(if matches!(self.body, Body::Joined(..)) {
                    JOINED
                } else {
                    LEFT
                });
                out.put_u64_le(*conn);
                put_bytes(&mut out, group.as_bytes());
            }
            Body::Attached(conn, attachment) => {
                out.put_u8(ATTACHED);
                out.put_u64_le(*conn);
                put_optional_bytes(&mut out, attachment.as_deref());
            }
            Body::Broadcast { message, except } => {
                out.put_u8(BROADCAST);
                put_optional_conn(&mut out, *except);
                put_message(&mut out, message);
            }
            Body::Publish { group, message, except } => {
                out.put_u8(PUBLISH);
                put_bytes(&mut out, group.as_bytes());
                put_optional_conn(&mut out, *except);
                put_message(&mut out, message);
            }
            Body::Send(conn, message) => {
                out.put_u8(SEND);
                out.put_u64_le(*conn);
                put_message(&mut out, message);
            }
            Body::Close(conn, code, reason) => {
                out.put_u8(CLOSE);
                out.put_u64_le(*conn);
                out.put_u16_le(*code);
                put_bytes(&mut out, reason.as_bytes());
            }
        }
        out.freeze()
    }

    /// Reads a message. Messages and attachments are slices of `bytes`, not copies.
    pub fn decode(mut bytes: Bytes) -> Result<Self, WireError> {
        let b = &mut bytes;
        let version = get_u8(b)?;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        need(b, 18)?;
        let origin = b.get_u16_le();
        let incarnation = b.get_u64_le();
        let seq = b.get_u64_le();
        let body = match get_u8(b)? {
            HELLO => Body::Hello(get_members(b)?),
            STATE => Body::State(get_members(b)?),
            HEARTBEAT => Body::Heartbeat,
            BYE => Body::Bye,
            OPENED => Body::Opened(get_member(b)?),
            CLOSED => Body::Closed(get_u64(b)?),
            JOINED => Body::Joined(get_u64(b)?, get_string(b)?),
            LEFT => Body::Left(get_u64(b)?, get_string(b)?),
            ATTACHED => Body::Attached(get_u64(b)?, get_optional_bytes(b)?),
            BROADCAST => {
                let except = get_optional_conn(b)?;
                Body::Broadcast {
                    message: get_message(b)?,
                    except,
                }
            }
            PUBLISH => {
                let group = get_string(b)?;
                let except = get_optional_conn(b)?;
                Body::Publish {
                    group,
                    message: get_message(b)?,
                    except,
                }
            }
            SEND => Body::Send(get_u64(b)?, get_message(b)?),
            CLOSE => {
                let conn = get_u64(b)?;
                need(b, 2)?;
                let code = b.get_u16_le();
                Body::Close(conn, code, get_string(b)?)
            }
            kind => return Err(WireError::Kind(kind)),
        };
        if b.has_remaining() {
            return Err(WireError::Trailing);
        }
        Ok(Self {
            origin,
            incarnation,
            seq,
            body,
        })
    }
}

impl Body {
    /// Roughly how many bytes the body takes, to size the buffer once.
    fn payload_len(&self) -> usize {
        let message = |m: &Outgoing| match m {
            Outgoing::Text(text) => text.as_str().len(),
            Outgoing::Binary(data) => data.len(),
        };
        match self {
            Body::Broadcast { message: m, .. } | Body::Publish { message: m, .. } | Body::Send(_, m) => 32 + message(m),
            Body::Hello(members) | Body::State(members) => members
                .iter()
                .map(|m| {
                    32 + m.attachment.as_ref().map_or(0, Bytes::len)
                        + m.groups.iter().map(|g| 4 + g.len()).sum::<usize>()
                })
                .sum(),
            _ => 64,
        }
    }
}

/// A connection's handshake facts as bytes, kept in Redis for the other hosts' `info`.
pub fn encode_info(info: &ConnectionInfo) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(VERSION);
    out.put_u64_le(info.id);
    put_bytes(&mut out, info.remote_address.as_bytes());
    put_bytes(&mut out, info.path.as_bytes());
    put_optional_bytes(&mut out, info.query.as_deref().map(str::as_bytes));
    put_optional_bytes(&mut out, info.subprotocol.as_deref().map(str::as_bytes));
    out.put_u32_le(info.headers.len() as u32);
    for (name, value) in info.headers.iter() {
        put_bytes(&mut out, name.as_bytes());
        put_bytes(&mut out, value.as_bytes());
    }
    out.freeze()
}

/// Reads what [`encode_info`] wrote.
pub fn decode_info(mut bytes: Bytes) -> Result<ConnectionInfo, WireError> {
    let b = &mut bytes;
    let version = get_u8(b)?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let id = get_u64(b)?;
    let remote_address = get_string(b)?;
    let path = get_string(b)?;
    let optional_string = |b: &mut Bytes| -> Result<Option<String>, WireError> {
        get_optional_bytes(b)?
            .map(|bytes| String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Utf8))
            .transpose()
    };
    let query = optional_string(b)?;
    let subprotocol = optional_string(b)?;
    let count = get_u32(b)? as usize;
    // A header takes at least its two 4-byte lengths.
    need(b, count.saturating_mul(8))?;
    let headers = (0..count)
        .map(|_| Ok((get_string(b)?, get_string(b)?)))
        .collect::<Result<Vec<_>, WireError>>()?
        .into();
    if b.has_remaining() {
        return Err(WireError::Trailing);
    }
    Ok(ConnectionInfo {
        id,
        remote_address,
        path,
        query,
        subprotocol,
        headers,
    })
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32_le(bytes.len() as u32);
    out.put_slice(bytes);
}

fn put_optional_bytes(out: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => out.put_u8(0),
        Some(bytes) => {
            out.put_u8(1);
            put_bytes(out, bytes);
        }
    }
}

fn put_optional_conn(out: &mut BytesMut, conn: Option<ConnId>) {
    match conn {
        None => out.put_u8(0),
        Some(conn) => {
            out.put_u8(1);
            out.put_u64_le(conn);
        }
    }
}

fn put_message(out: &mut BytesMut, message: &Outgoing) {
    match message {
        Outgoing::Text(text) => {
            out.put_u8(0);
            put_bytes(out, text.as_str().as_bytes());
        }
        Outgoing::Binary(data) => {
            out.put_u8(1);
            put_bytes(out, data);
        }
    }
}

fn put_member(out: &mut BytesMut, member: &Member) {
    out.put_u64_le(member.conn);
    put_optional_bytes(out, member.attachment.as_deref());
    out.put_u32_le(member.groups.len() as u32);
    for group in &member.groups {
        put_bytes(out, group.as_bytes());
    }
}

fn put_members(out: &mut BytesMut, tag: u8, members: &[Member]) {
    out.put_u8(tag);
    out.put_u32_le(members.len() as u32);
    for member in members {
        put_member(out, member);
    }
}

fn need(b: &Bytes, n: usize) -> Result<(), WireError> {
    if b.remaining() < n {
        return Err(WireError::Truncated);
    }
    Ok(())
}

fn get_u8(b: &mut Bytes) -> Result<u8, WireError> {
    need(b, 1)?;
    Ok(b.get_u8())
}

fn get_u64(b: &mut Bytes) -> Result<u64, WireError> {
    need(b, 8)?;
    Ok(b.get_u64_le())
}

fn get_u32(b: &mut Bytes) -> Result<u32, WireError> {
    need(b, 4)?;
    Ok(b.get_u32_le())
}

fn get_bytes(b: &mut Bytes) -> Result<Bytes, WireError> {
    let len = get_u32(b)? as usize;
    need(b, len)?;
    Ok(b.split_to(len))
}

fn get_string(b: &mut Bytes) -> Result<String, WireError> {
    String::from_utf8(get_bytes(b)?.to_vec()).map_err(|_| WireError::Utf8)
}

fn get_flag(b: &mut Bytes) -> Result<bool, WireError> {
    match get_u8(b)? {
        0 => Ok(false),
        1 => Ok(true),
        kind => Err(WireError::Kind(kind)),
    }
}

fn get_optional_bytes(b: &mut Bytes) -> Result<Option<Bytes>, WireError> {
    Ok(if get_flag(b)? { Some(get_bytes(b)?) } else { None })
}

fn get_optional_conn(b: &mut Bytes) -> Result<Option<ConnId>, WireError> {
    Ok(if get_flag(b)? { Some(get_u64(b)?) } else { None })
}

fn get_message(b: &mut Bytes) -> Result<Outgoing, WireError> {
    let binary = get_flag(b)?;
    let data = get_bytes(b)?;
    if binary {
        return Ok(Outgoing::Binary(data));
    }
    TextBytes::try_from(data)
        .map(Outgoing::Text)
        .map_err(|_| WireError::Utf8)
}

fn get_member(b: &mut Bytes) -> Result<Member, WireError> {
    let conn = get_u64(b)?;
    let attachment = get_optional_bytes(b)?;
    let count = get_u32(b)? as usize;
    // Every group takes at least its 4-byte length: a count the bytes cannot hold is
    // an error before anything is allocated for it.
    need(b, count.saturating_mul(4))?;
    let groups = (0..count).map(|_| get_string(b)).collect::<Result<_, _>>()?;
    Ok(Member {
        conn,
        attachment,
        groups,
    })
}

fn get_members(b: &mut Bytes) -> Result<Vec<Member>, WireError> {
    let count = get_u32(b)? as usize;
    // A member takes at least 13 bytes (id, attachment flag, group count).
    need(b, count.saturating_mul(13))?;
    (0..count).map(|_| get_member(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_body() -> Vec<Body> {
        let member = Member {
            conn: 7 << 37 | 3,
            attachment: Some(Bytes::from_static(b"alice")),
            groups: vec!["room".into(), "".into()],
        };
        let bare = Member {
            conn: 9,
            attachment: None,
            groups: vec![],
        };
        vec![
            Body::Hello(vec![member.clone(), bare.clone()]),
            Body::State(vec![]),
            Body::Heartbeat,
            Body::Bye,
            Body::Opened(member),
            Body::Closed(u64::MAX),
            Body::Joined(1, "g".into()),
            Body::Left(2, "g".into()),
            Body::Attached(3, None),
            Body::Attached(3, Some(Bytes::new())),
            Body::Broadcast {
                message: Outgoing::Text("héllo".into()),
                except: Some(4),
            },
            Body::Publish {
                group: "room".into(),
                message: Outgoing::Binary(Bytes::from_static(&[0, 255])),
                except: None,
            },
            Body::Send(5, Outgoing::Text("".into())),
            Body::Close(6, 4000, "bye".into()),
        ]
    }

    #[test]
    fn connection_info_round_trips_and_truncations_fail() {
        let info = ConnectionInfo {
            id: 3 << 37 | 5,
            remote_address: "127.0.0.1:5000".into(),
            path: "/chat".into(),
            query: Some("name=ann".into()),
            subprotocol: None,
            headers: vec![("host".into(), "example".into()), ("x".into(), "".into())].into(),
        };
        let bytes = encode_info(&info);
        assert_eq!(decode_info(bytes.clone()), Ok(info));
        for len in 0..bytes.len() {
            assert!(decode_info(bytes.slice(..len)).is_err(), "prefix of {len} bytes");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(decode_info(longer.into()), Err(WireError::Trailing));
    }

    /// A message that decodes is one that encodes back to the same bytes: decoding
    /// accepts nothing the encoder would not write (and never panics, whatever the bytes).
    fn check_total(bytes: &[u8]) {
        if let Ok(envelope) = Envelope::decode(Bytes::copy_from_slice(bytes)) {
            assert_eq!(&envelope.encode()[..], bytes, "{envelope:?}");
        }
        if let Ok(info) = decode_info(Bytes::copy_from_slice(bytes)) {
            assert_eq!(&encode_info(&info)[..], bytes, "{info:?}");
        }
    }

    #[test]
    fn mutated_and_random_bytes_never_panic_and_decode_only_canonical_messages() {
        let mut seeds: Vec<Vec<u8>> = every_body()
            .into_iter()
            .map(|body| {
                Envelope {
                    origin: 3,
                    incarnation: 5,
                    seq: 8,
                    body,
                }
                .encode()
                .to_vec()
            })
            .collect();
        seeds.push(
            encode_info(&ConnectionInfo {
                id: 1,
                remote_address: "a".into(),
                path: "/".into(),
                query: Some("q".into()),
                subprotocol: Some("p".into()),
                headers: vec![("h".into(), "v".into())].into(),
            })
            .to_vec(),
        );
        // Every byte of every message, set to values that hit lengths, flags and tags.
        for seed in &seeds {
            for at in 0..seed.len() {
                for value in [0, 1, 2, 0x7f, 0x80, 0xff, seed[at] ^ 1, seed[at].wrapping_add(1)] {
                    let mut mutated = seed.clone();
                    mutated[at] = value;
                    check_total(&mutated);
                }
            }
        }
        // Random tails after a valid header, from a fixed xorshift sequence.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..50_000 {
            let mut bytes = seeds[(next() % seeds.len() as u64) as usize][..20].to_vec();
            let tail = (next() % 64) as usize;
            bytes.extend((0..tail).map(|_| (next() % 16) as u8));
            check_total(&bytes);
        }
    }

    #[test]
    fn sender_is_read_from_the_header() {
        let envelope = Envelope {
            origin: 513,
            incarnation: u64::MAX - 5,
            seq: 9,
            body: Body::Heartbeat,
        };
        assert_eq!(sender_of(&envelope.encode()), Some((513, u64::MAX - 5)));
        assert_eq!(sender_of(&envelope.encode()[..10]), None);
        assert_eq!(sender_of(b""), None);
    }

    #[test]
    fn every_body_round_trips() {
        for (seq, body) in every_body().into_iter().enumerate() {
            let envelope = Envelope {
                origin: 513,
                incarnation: 0xdead_beef_0123,
                seq: seq as u64,
                body,
            };
            assert_eq!(Envelope::decode(envelope.encode()), Ok(envelope));
        }
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        for body in every_body() {
            let bytes = Envelope {
                origin: 1,
                incarnation: 2,
                seq: 3,
                body,
            }
            .encode();
            for len in 0..bytes.len() {
                assert!(Envelope::decode(bytes.slice(..len)).is_err(), "{len} of {bytes:?}");
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert_eq!(Envelope::decode(longer.into()), Err(WireError::Trailing));
        }
    }

    #[test]
    fn hostile_messages_are_errors_without_huge_allocations() {
        let header = |tag: u8| {
            let mut b = vec![VERSION, 1, 0];
            b.extend_from_slice(&[0; 16]);
            b.push(tag);
            b
        };
        // A member count of 4 billion in a few bytes.
        let mut hello = header(HELLO);
        hello.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Envelope::decode(hello.into()), Err(WireError::Truncated));
        let mut text = header(SEND);
        text.extend_from_slice(&1u64.to_le_bytes());
        text.push(0);
        text.extend_from_slice(&2u32.to_le_bytes());
        text.extend_from_slice(&[0xc3, 0x28]);
        assert_eq!(Envelope::decode(text.into()), Err(WireError::Utf8));
        assert_eq!(Envelope::decode(header(99).into()), Err(WireError::Kind(99)));
        assert_eq!(Envelope::decode(vec![2].into()), Err(WireError::Version(2)));
    }
}
