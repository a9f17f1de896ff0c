//! The echo plugin written against the raw wit-bindgen bindings, without the SDK:
//! `make bench` compares the two to show the SDK costs nothing per call.

// Built against the 0.1.0 world on purpose: the host serves both versions.
wit_bindgen::generate!({ world: "plugin", path: "../../wit/0.1.0" });

use wsplug::plugin::host;

struct Echo;

impl Guest for Echo {
    fn on_open(_conn: ConnectionId) {}

    fn on_text(conn: ConnectionId, text: String) {
        // The only possible error is that the connection is gone: nothing to do then.
        let _ = host::send_text(conn, &text);
    }

    fn on_binary(conn: ConnectionId, data: Vec<u8>) {
        let _ = host::send_binary(conn, &data);
    }

    fn on_close(_conn: ConnectionId, _code: u16, _reason: String) {}
}

export!(Echo);
