//! Answers every text message with `v1:<n>` (`v2:<n>` when built with the `v2`
//! feature), where n counts that connection's messages in this instance. Two builds
//! of it let the tests watch a hot reload switch versions under load.

// Built against the 0.1.0 world on purpose: the host serves both versions.
wit_bindgen::generate!({ world: "plugin", path: "../../wit/0.1.0" });

use std::cell::RefCell;
use std::collections::HashMap;

use wsplug::plugin::host;

const VERSION: &str = if cfg!(feature = "v2") { "v2" } else { "v1" };

thread_local! {
    /// Messages seen per connection.
    static COUNTS: RefCell<HashMap<ConnectionId, u64>> = RefCell::new(HashMap::new());
}

struct Counter;

impl Guest for Counter {
    fn on_open(conn: ConnectionId) {
        COUNTS.with(|c| c.borrow_mut().insert(conn, 0));
    }

    fn on_text(conn: ConnectionId, _text: String) {
        let n = COUNTS.with(|c| {
            let mut counts = c.borrow_mut();
            let n = counts.entry(conn).or_insert(0);
            *n += 1;
            *n
        });
        let _ = host::send_text(conn, &format!("{VERSION}:{n}"));
    }

    fn on_binary(_conn: ConnectionId, _data: Vec<u8>) {}

    fn on_close(conn: ConnectionId, _code: u16, _reason: String) {
        COUNTS.with(|c| c.borrow_mut().remove(&conn));
    }
}

export!(Counter);
