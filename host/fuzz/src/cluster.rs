//! The cluster's protocol (wsplug-cluster-proto) on arbitrary bytes: whatever a Redis
//! writer publishes, decoding is total (an error, never a panic), a message that decodes
//! encodes back to one that decodes the same, and a view fed any sequence of messages
//! delivers a send or a close only to a connection of its own host and incarnation,
//! and only because a message addressed it there.
//!
//! Input: the first byte's low bit says whether the cluster has a secret (then almost
//! nothing decodes: the tag check is what is fuzzed); then messages, each a `u16`
//! little-endian length and its bytes. Each is read as a bus message and as a
//! connection's facts. Time moves 100 ms per message, so hosts expire and are forgotten.

use std::time::{Duration, Instant};

use bytes::Bytes;
use wsplug_cluster_proto::view::{Delivery, Effect, View, host_of};
use wsplug_cluster_proto::wire::{Body, BusKey, Envelope, decode_info, encode_info};

use crate::Reader;

/// The host the view is of.
pub const ME: u16 = 1;
/// Its incarnation.
pub const INCARNATION: u64 = 7;
/// The secret of the keyed runs.
pub const SECRET: &[u8] = b"fuzz-secret-0123";

pub fn run(data: &[u8]) {
    let mut input = Reader::new(data);
    let secret = BusKey::derive(SECRET);
    let key = (input.byte_or(0) & 1 == 1).then_some(&secret);
    let mut view = View::new(ME, INCARNATION);
    let start = Instant::now();
    let mut step = 0u64;
    while !input.is_empty() {
        let len = u16::from_le_bytes([input.byte_or(0), input.byte_or(0)]) as usize;
        let bytes = Bytes::copy_from_slice(input.take(len));
        if let Ok(info) = decode_info(bytes.clone(), key) {
            assert_eq!(decode_info(encode_info(&info, key), key), Ok(info));
        }
        let Ok(envelope) = Envelope::decode(bytes, key) else {
            continue;
        };
        assert_eq!(Envelope::decode(envelope.encode(key), key).as_ref(), Ok(&envelope));
        let addressed = match &envelope.body {
            Body::Send { conn, incarnation, .. } | Body::Close { conn, incarnation, .. } => Some((*conn, *incarnation)),
            _ => None,
        };
        step += 1;
        let now = start + Duration::from_millis(100 * step);
        if let Some(Effect::Deliver(Delivery::Send(conn, _) | Delivery::Close(conn, ..))) = view.apply(envelope, now) {
            assert_eq!(
                addressed.map(|(to, _)| to),
                Some(conn),
                "delivered to a connection nobody addressed"
            );
            assert_eq!(host_of(conn), ME, "delivered to another host's connection");
            assert_eq!(
                addressed.map(|(_, to)| to),
                Some(INCARNATION),
                "delivered for another incarnation"
            );
        }
        view.expire(now, Duration::from_secs(3));
    }
}

/// An input of `messages` (for the seeds), with a secret if `keyed`.
pub fn input(keyed: bool, messages: &[Bytes]) -> Vec<u8> {
    let mut data = vec![u8::from(keyed)];
    for message in messages {
        data.extend_from_slice(&(message.len() as u16).to_le_bytes());
        data.extend_from_slice(message);
    }
    data
}
