//! Relays every message, byte for byte, to every other open connection: text as
//! text and binary as binary, never back to its sender. Nothing is sent when a
//! connection opens or closes. The benchmarks' fan-out workload.

// Built against the 0.1.0 world on purpose, on bare bindings: every host version
// serves it, so `make bench --compare` can run it on hosts of any age.
wit_bindgen::generate!({ world: "plugin", path: "../../wit/0.1.0" });

use wsplug::plugin::host;

struct Broadcast;

impl Guest for Broadcast {
    fn on_open(_conn: ConnectionId) {}

    fn on_text(conn: ConnectionId, text: String) {
        // The count of recipients is of no use here.
        host::broadcast_text(&text, Some(conn));
    }

    fn on_binary(conn: ConnectionId, data: Vec<u8>) {
        host::broadcast_binary(&data, Some(conn));
    }

    fn on_close(_conn: ConnectionId, _code: u16, _reason: String) {}
}

export!(Broadcast);
