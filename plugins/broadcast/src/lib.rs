//! Relays every message, byte for byte, to every other open connection: text as
//! text and binary as binary, never back to its sender. Nothing is sent when a
//! connection opens or closes. The benchmarks' fan-out workload.

use wsplug_plugin::{ConnectionId, Plugin, host};

struct Broadcast;

impl Plugin for Broadcast {
    fn on_text(conn: ConnectionId, text: String) {
        // The count of recipients is of no use here.
        host::broadcast_text(&text, Some(conn));
    }

    fn on_binary(conn: ConnectionId, data: Vec<u8>) {
        host::broadcast_binary(&data, Some(conn));
    }
}

wsplug_plugin::export!(Broadcast);
