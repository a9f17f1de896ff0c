//! What hosts of a cluster tell each other through Redis, as bytes: plain functions,
//! no I/O, so that a malformed or hostile message is an error value and never a panic.
//!
//! Every message is an [`Envelope`]: the sending host's number and incarnation, a
//! sequence number (a receiver drops what it has seen), the time it was sent, and a
//! [`Body`]. Integers are little-endian; strings and byte strings are a `u32` length,
//! then the bytes. In a cluster with a secret every message, and every connection's
//! facts kept in Redis, ends with a [`TAG_LEN`]-byte tag: keyed BLAKE3 of everything
//! before it, under a key derived from the secret ([`BusKey`]). Without the key nobody
//! can make a message a host accepts, nor change one.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use wsplug_conn::{ConnId, ConnectionInfo, Outgoing, TextBytes};

/// Version of the encoding, the first byte of every message. Version 2 added the time
/// of sending, the incarnation a directed message is for, states in parts, and tags.
const VERSION: u8 = 2;

/// A host's number in its cluster (part of every connection id it hands out).
pub type HostNumber = u16;

/// Bytes of the tag that authenticates a message in a cluster with a secret.
pub const TAG_LEN: usize = 16;

/// A host's whole state is sent in parts of about this many bytes (a part holds whole
/// members, so one over it is a part of its own): far below what Redis lets pile up
/// for a subscriber (`client-output-buffer-limit pubsub`, 32 MB by default).
pub const STATE_PART_BYTES: usize = 256 << 10;

/// The key that authenticates a cluster's messages, derived from its `cluster_secret`.
#[derive(Clone)]
pub struct BusKey([u8; 32]);

impl BusKey {
    /// The key of the cluster whose secret is `secret`.
    pub fn derive(secret: &[u8]) -> Self {
        Self(blake3::derive_key("wsplug 2026-12-07 cluster message tag", secret))
    }

    fn tag(&self, bytes: &[u8]) -> [u8; TAG_LEN] {
        let hash = blake3::keyed_hash(&self.0, bytes);
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&hash.as_bytes()[..TAG_LEN]);
        tag
    }
}

impl std::fmt::Debug for BusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusKey(..)")
    }
}

/// Appends the tag of `key` to a message (nothing without a key).
fn seal(out: &mut BytesMut, key: Option<&BusKey>) {
    if let Some(key) = key {
        let tag = key.tag(out);
        out.put_slice(&tag);
    }
}

/// The message without its tag, if `key`'s tag is on it (any bytes without a key).
fn unseal(mut bytes: Bytes, key: Option<&BusKey>) -> Result<Bytes, WireError> {
    let Some(key) = key else {
        return Ok(bytes);
    };
    if bytes.len() < TAG_LEN {
        return Err(WireError::Forged);
    }
    let tag = bytes.split_off(bytes.len() - TAG_LEN);
    // In constant time: how many leading bytes match must not show in the timing.
    let differ = key
        .tag(&bytes)
        .iter()
        .zip(tag.iter())
        .fold(0, |acc, (a, b)| acc | (a ^ b));
    if differ != 0 {
        return Err(WireError::Forged);
    }
    Ok(bytes)
}

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
    /// When it was sent, in milliseconds since the Unix epoch (the sender's clock): in a
    /// cluster with a secret, a message far older than that is a replay.
    pub sent_ms: u64,
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

/// A member as the sending host keeps it: borrowed, to be encoded without a copy.
pub struct MemberRef<'a, G> {
    /// The connection.
    pub conn: ConnId,
    /// Its attachment.
    pub attachment: Option<&'a [u8]>,
    /// The groups it is in.
    pub groups: G,
}

/// One part of a host's whole state: its open connections, a part at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatePart {
    /// 0 for the first part, then one more for each.
    pub part: u32,
    /// Whether it is the last part: the state is whole.
    pub last: bool,
    /// The connections in this part.
    pub members: Vec<Member>,
}

impl StatePart {
    /// A whole state in one part (tests, and states that fit).
    pub fn whole(members: Vec<Member>) -> Self {
        Self {
            part: 0,
            last: true,
            members,
        }
    }
}

/// What a host tells the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// The sender (re)joined: this is (part of) all its open connections; every other
    /// host answers with its [`Body::State`].
    Hello(StatePart),
    /// (Part of) all the sender's open connections, replacing, once whole, what the
    /// receiver knew of them.
    State(StatePart),
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
    Send {
        /// The connection.
        conn: ConnId,
        /// The incarnation of the host it belongs to: any other process that holds (or
        /// held) that host's number drops the message.
        incarnation: u64,
        /// The message.
        message: Outgoing,
    },
    /// Start closing one connection of the receiver.
    Close {
        /// The connection.
        conn: ConnId,
        /// The incarnation of the host it belongs to (see [`Body::Send`]).
        incarnation: u64,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
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
    /// The cluster has a secret, and the message does not carry its tag.
    #[error("not authenticated by the cluster's secret")]
    Forged,
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

/// Bytes of an envelope before its body: version, origin, incarnation, seq, sent_ms.
const HEADER_LEN: usize = 1 + 2 + 8 + 8 + 8;

/// The sender of a message, read without decoding (or authenticating) the rest:
/// `(origin, incarnation)`. A host skips its own messages, which Redis sends back to
/// it, with this.
pub fn sender_of(bytes: &[u8]) -> Option<(HostNumber, u64)> {
    match bytes {
        [VERSION, o0, o1, rest @ ..] if rest.len() >= 8 => {
            let incarnation = u64::from_le_bytes(rest[..8].try_into().ok()?);
            Some((u16::from_le_bytes([*o0, *o1]), incarnation))
        }
        _ => None,
    }
}

/// The part of an envelope every message of one host shares but for its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The sending host.
    pub origin: HostNumber,
    /// Its incarnation.
    pub incarnation: u64,
    /// When the message is sent, in milliseconds since the Unix epoch.
    pub sent_ms: u64,
}

impl Header {
    fn put(&self, out: &mut BytesMut, seq: u64) {
        out.put_u8(VERSION);
        out.put_u16_le(self.origin);
        out.put_u64_le(self.incarnation);
        out.put_u64_le(seq);
        out.put_u64_le(self.sent_ms);
    }
}

impl Envelope {
    /// The message as bytes, tagged with `key` if given.
    pub fn encode(&self, key: Option<&BusKey>) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + 32 + self.body.payload_len());
        Header {
            origin: self.origin,
            incarnation: self.incarnation,
            sent_ms: self.sent_ms,
        }
        .put(&mut out, self.seq);
        match &self.body {
            Body::Hello(part) => put_part(&mut out, HELLO, part),
            Body::State(part) => put_part(&mut out, STATE, part),
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
            Body::Send {
                conn,
                incarnation,
                message,
            } => {
                out.put_u8(SEND);
                out.put_u64_le(*conn);
                out.put_u64_le(*incarnation);
                put_message(&mut out, message);
            }
            Body::Close {
                conn,
                incarnation,
                code,
                reason,
            } => {
                out.put_u8(CLOSE);
                out.put_u64_le(*conn);
                out.put_u64_le(*incarnation);
                out.put_u16_le(*code);
                put_bytes(&mut out, reason.as_bytes());
            }
        }
        seal(&mut out, key);
        out.freeze()
    }

    /// Reads a message, checking `key`'s tag if given. Messages and attachments are
    /// slices of `bytes`, not copies.
    pub fn decode(bytes: Bytes, key: Option<&BusKey>) -> Result<Self, WireError> {
        let mut bytes = bytes;
        // The version first: a message of another version is not called forged.
        match bytes.first() {
            None => return Err(WireError::Truncated),
            Some(&version) if version != VERSION => return Err(WireError::Version(version)),
            Some(_) => {}
        }
        bytes = unseal(bytes, key)?;
        let b = &mut bytes;
        need(b, HEADER_LEN)?;
        b.advance(1);
        let origin = b.get_u16_le();
        let incarnation = b.get_u64_le();
        let seq = b.get_u64_le();
        let sent_ms = b.get_u64_le();
        let body = match get_u8(b)? {
            HELLO => Body::Hello(get_part(b)?),
            STATE => Body::State(get_part(b)?),
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
            SEND => Body::Send {
                conn: get_u64(b)?,
                incarnation: get_u64(b)?,
                message: get_message(b)?,
            },
            CLOSE => {
                let conn = get_u64(b)?;
                let incarnation = get_u64(b)?;
                need(b, 2)?;
                let code = b.get_u16_le();
                Body::Close {
                    conn,
                    incarnation,
                    code,
                    reason: get_string(b)?,
                }
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
            sent_ms,
            body,
        })
    }
}

/// Encodes a host's whole state as numbered parts of about [`STATE_PART_BYTES`] each,
/// sequence numbers from `first_seq` on: as a `Hello` if `hello`, else as a `State`.
/// Encoded straight from where the host keeps its connections: nothing is copied but
/// into the messages.
pub fn encode_state<'a, G>(
    header: Header,
    first_seq: u64,
    hello: bool,
    members: impl Iterator<Item = MemberRef<'a, G>>,
    key: Option<&BusKey>,
) -> Vec<Bytes>
where
    G: ExactSizeIterator<Item = &'a str>,
{
    let mut parts = Vec::new();
    let mut writer = PartWriter::start(header, first_seq, hello, 0);
    for member in members {
        writer.add(member);
        if writer.out.len() >= STATE_PART_BYTES {
            let next = writer.part + 1;
            parts.push(writer.finish(false, key));
            writer = PartWriter::start(header, first_seq + u64::from(next), hello, next);
        }
    }
    parts.push(writer.finish(true, key));
    parts
}

/// One part of a state being written.
struct PartWriter {
    out: BytesMut,
    part: u32,
    count: u32,
    /// Where the `last` flag and the member count go once known.
    flag_at: usize,
}

impl PartWriter {
    fn start(header: Header, seq: u64, hello: bool, part: u32) -> Self {
        let mut out = BytesMut::with_capacity(STATE_PART_BYTES.min(4096) + HEADER_LEN);
        header.put(&mut out, seq);
        out.put_u8(if hello { HELLO } else { STATE });
        out.put_u32_le(part);
        let flag_at = out.len();
        out.put_u8(0);
        out.put_u32_le(0);
        Self {
            out,
            part,
            count: 0,
            flag_at,
        }
    }

    fn add<'a, G: ExactSizeIterator<Item = &'a str>>(&mut self, member: MemberRef<'a, G>) {
        self.out.put_u64_le(member.conn);
        put_optional_bytes(&mut self.out, member.attachment);
        self.out.put_u32_le(member.groups.len() as u32);
        for group in member.groups {
            put_bytes(&mut self.out, group.as_bytes());
        }
        self.count += 1;
    }

    fn finish(mut self, last: bool, key: Option<&BusKey>) -> Bytes {
        self.out[self.flag_at] = u8::from(last);
        self.out[self.flag_at + 1..self.flag_at + 5].copy_from_slice(&self.count.to_le_bytes());
        seal(&mut self.out, key);
        self.out.freeze()
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
            Body::Broadcast { message: m, .. } | Body::Publish { message: m, .. } | Body::Send { message: m, .. } => {
                32 + message(m)
            }
            Body::Hello(part) | Body::State(part) => part
                .members
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

/// A connection's handshake facts as bytes, kept in Redis for the other hosts' `info`,
/// tagged with `key` if given.
pub fn encode_info(info: &ConnectionInfo, key: Option<&BusKey>) -> Bytes {
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
    seal(&mut out, key);
    out.freeze()
}

/// Reads what [`encode_info`] wrote, checking `key`'s tag if given.
pub fn decode_info(bytes: Bytes, key: Option<&BusKey>) -> Result<ConnectionInfo, WireError> {
    match bytes.first() {
        None => return Err(WireError::Truncated),
        Some(&version) if version != VERSION => return Err(WireError::Version(version)),
        Some(_) => {}
    }
    let mut bytes = unseal(bytes, key)?;
    let b = &mut bytes;
    b.advance(1);
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

fn put_part(out: &mut BytesMut, tag: u8, part: &StatePart) {
    out.put_u8(tag);
    out.put_u32_le(part.part);
    out.put_u8(u8::from(part.last));
    out.put_u32_le(part.members.len() as u32);
    for member in &part.members {
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

fn get_part(b: &mut Bytes) -> Result<StatePart, WireError> {
    let part = get_u32(b)?;
    let last = get_flag(b)?;
    let count = get_u32(b)? as usize;
    // A member takes at least 13 bytes (id, attachment flag, group count).
    need(b, count.saturating_mul(13))?;
    let members = (0..count).map(|_| get_member(b)).collect::<Result<_, _>>()?;
    Ok(StatePart { part, last, members })
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
            Body::Hello(StatePart::whole(vec![member.clone(), bare.clone()])),
            Body::State(StatePart {
                part: 3,
                last: false,
                members: vec![],
            }),
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
            Body::Send {
                conn: 5,
                incarnation: 77,
                message: Outgoing::Text("".into()),
            },
            Body::Close {
                conn: 6,
                incarnation: 78,
                code: 4000,
                reason: "bye".into(),
            },
        ]
    }

    fn envelope(seq: u64, body: Body) -> Envelope {
        Envelope {
            origin: 513,
            incarnation: 0xdead_beef_0123,
            seq,
            sent_ms: 1_700_000_000_000 + seq,
            body,
        }
    }

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            id: 3 << 37 | 5,
            remote_address: "127.0.0.1:5000".into(),
            path: "/chat".into(),
            query: Some("name=ann".into()),
            subprotocol: None,
            headers: vec![("host".into(), "example".into()), ("x".into(), "".into())].into(),
        }
    }

    #[test]
    fn connection_info_round_trips_and_truncations_fail() {
        let key = BusKey::derive(b"secret");
        for key in [None, Some(&key)] {
            let bytes = encode_info(&info(), key);
            assert_eq!(decode_info(bytes.clone(), key), Ok(info()));
            for len in 0..bytes.len() {
                assert!(decode_info(bytes.slice(..len), key).is_err(), "prefix of {len} bytes");
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert!(decode_info(longer.into(), key).is_err());
        }
    }

    /// A message that decodes is one that encodes back to the same bytes: decoding
    /// accepts nothing the encoder would not write (and never panics, whatever the bytes).
    fn check_total(bytes: &[u8], key: Option<&BusKey>) {
        if let Ok(envelope) = Envelope::decode(Bytes::copy_from_slice(bytes), key) {
            assert_eq!(&envelope.encode(key)[..], bytes, "{envelope:?}");
        }
        if let Ok(info) = decode_info(Bytes::copy_from_slice(bytes), key) {
            assert_eq!(&encode_info(&info, key)[..], bytes, "{info:?}");
        }
    }

    #[test]
    fn mutated_and_random_bytes_never_panic_and_decode_only_canonical_messages() {
        let mut seeds: Vec<Vec<u8>> = every_body()
            .into_iter()
            .enumerate()
            .map(|(seq, body)| envelope(seq as u64, body).encode(None).to_vec())
            .collect();
        seeds.push(encode_info(&info(), None).to_vec());
        // Every byte of every message, set to values that hit lengths, flags and tags.
        for seed in &seeds {
            for at in 0..seed.len() {
                for value in [0, 1, 2, 0x7f, 0x80, 0xff, seed[at] ^ 1, seed[at].wrapping_add(1)] {
                    let mut mutated = seed.clone();
                    mutated[at] = value;
                    check_total(&mutated, None);
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
            let mut bytes = seeds[(next() % seeds.len() as u64) as usize][..HEADER_LEN].to_vec();
            let tail = (next() % 64) as usize;
            bytes.extend((0..tail).map(|_| (next() % 16) as u8));
            check_total(&bytes, None);
        }
    }

    #[test]
    fn with_a_secret_only_untouched_messages_of_its_holders_decode() {
        let key = BusKey::derive(b"the cluster's secret");
        let other = BusKey::derive(b"another secret");
        for (seq, body) in every_body().into_iter().enumerate() {
            let envelope = envelope(seq as u64, body);
            let sealed = envelope.encode(Some(&key));
            assert_eq!(Envelope::decode(sealed.clone(), Some(&key)), Ok(envelope.clone()));
            // Unsealed, sealed with another key, or changed anywhere (the tag included): forged.
            assert_eq!(
                Envelope::decode(envelope.encode(None), Some(&key)),
                Err(WireError::Forged)
            );
            assert_eq!(
                Envelope::decode(envelope.encode(Some(&other)), Some(&key)),
                Err(WireError::Forged)
            );
            for at in 1..sealed.len() {
                let mut changed = sealed.to_vec();
                changed[at] ^= 0x20;
                assert_eq!(
                    Envelope::decode(changed.into(), Some(&key)),
                    Err(WireError::Forged),
                    "byte {at}"
                );
            }
            // A host without the secret cannot read a sealed message as one of its own.
            assert!(Envelope::decode(sealed, None).is_err());
        }
        assert_eq!(format!("{key:?}"), "BusKey(..)");
    }

    #[test]
    fn sender_is_read_from_the_header() {
        let envelope = Envelope {
            origin: 513,
            incarnation: u64::MAX - 5,
            seq: 9,
            sent_ms: 1,
            body: Body::Heartbeat,
        };
        assert_eq!(sender_of(&envelope.encode(None)), Some((513, u64::MAX - 5)));
        assert_eq!(sender_of(&envelope.encode(None)[..10]), None);
        assert_eq!(sender_of(b""), None);
    }

    #[test]
    fn every_body_round_trips() {
        for (seq, body) in every_body().into_iter().enumerate() {
            let envelope = envelope(seq as u64, body);
            assert_eq!(Envelope::decode(envelope.encode(None), None), Ok(envelope));
        }
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        for body in every_body() {
            let bytes = envelope(3, body).encode(None);
            for len in 0..bytes.len() {
                assert!(
                    Envelope::decode(bytes.slice(..len), None).is_err(),
                    "{len} of {bytes:?}"
                );
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert_eq!(Envelope::decode(longer.into(), None), Err(WireError::Trailing));
        }
    }

    #[test]
    fn a_large_state_goes_in_numbered_parts_that_add_up_to_it() {
        let key = BusKey::derive(b"s");
        let header = Header {
            origin: 4,
            incarnation: 40,
            sent_ms: 5,
        };
        // 100 members of about 16 KiB: about 1.6 MB, in parts of about 256 KiB.
        let groups: Vec<String> = (0..4).map(|g| format!("group-{g}")).collect();
        let attachment = vec![b'a'; 16 << 10];
        let members = (0..100u64).map(|n| MemberRef {
            conn: n,
            attachment: Some(&attachment[..]),
            groups: groups.iter().map(String::as_str),
        });
        let parts = encode_state(header, 11, true, members, Some(&key));
        assert!((6..=8).contains(&parts.len()), "{} parts", parts.len());
        let mut seen = Vec::new();
        for (n, bytes) in parts.iter().enumerate() {
            assert!(bytes.len() <= STATE_PART_BYTES + (16 << 10) + 256, "{}", bytes.len());
            let envelope = Envelope::decode(bytes.clone(), Some(&key)).unwrap();
            assert_eq!((envelope.origin, envelope.seq), (4, 11 + n as u64));
            let Body::Hello(part) = envelope.body else {
                panic!("{:?}", envelope.body)
            };
            assert_eq!((part.part, part.last), (n as u32, n + 1 == parts.len()));
            for member in part.members {
                assert_eq!(member.groups, groups);
                assert_eq!(member.attachment.as_deref(), Some(&attachment[..]));
                seen.push(member.conn);
            }
        }
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        // No member at all: one empty, last part.
        let empty = encode_state(
            header,
            1,
            false,
            std::iter::empty::<MemberRef<'_, std::iter::Empty<&str>>>(),
            None,
        );
        assert_eq!(
            Envelope::decode(empty[0].clone(), None).unwrap().body,
            Body::State(StatePart::whole(vec![]))
        );
    }

    #[test]
    fn hostile_messages_are_errors_without_huge_allocations() {
        let header = |tag: u8| {
            let mut b = vec![VERSION, 1, 0];
            b.extend_from_slice(&[0; 24]);
            b.push(tag);
            b
        };
        // A member count of 4 billion in a few bytes.
        let mut hello = header(HELLO);
        hello.extend_from_slice(&0u32.to_le_bytes());
        hello.push(1);
        hello.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Envelope::decode(hello.into(), None), Err(WireError::Truncated));
        let mut text = header(SEND);
        text.extend_from_slice(&1u64.to_le_bytes());
        text.extend_from_slice(&1u64.to_le_bytes());
        text.push(0);
        text.extend_from_slice(&2u32.to_le_bytes());
        text.extend_from_slice(&[0xc3, 0x28]);
        assert_eq!(Envelope::decode(text.into(), None), Err(WireError::Utf8));
        assert_eq!(Envelope::decode(header(99).into(), None), Err(WireError::Kind(99)));
        assert_eq!(Envelope::decode(vec![1].into(), None), Err(WireError::Version(1)));
        assert_eq!(
            Envelope::decode(vec![1].into(), Some(&BusKey::derive(b"k"))),
            Err(WireError::Version(1))
        );
    }
}
