//! Echoes text as text and binary as binary to the connection that sent it.

use wsplug_plugin::{ConnectionId, Plugin, host};

struct Echo;

impl Plugin for Echo {
    // The only possible error is that the connection is gone: nothing to do then.
    fn on_text(conn: ConnectionId, text: String) {
        let _ = host::send_text(conn, &text);
    }

    fn on_binary(conn: ConnectionId, data: Vec<u8>) {
        let _ = host::send_binary(conn, &data);
    }
}

wsplug_plugin::export!(Echo);
