//! A plugin that echoes every text message, except four commands that make it fail
//! the way real plugins do: `panic` panics, `loop` never returns, `oom` allocates
//! until memory runs out, `trap` executes `unreachable`. A connection whose path is
//! `/panic-on-open` makes `on-open` panic, so a plugin that fails on every event can
//! be played. The host's tests use it to check that a failing plugin takes down
//! neither the server nor other connections.

// Built against the 0.1.0 world on purpose: the host serves both versions.
wit_bindgen::generate!({ world: "plugin", path: "../../wit/0.1.0" });

use wsplug::plugin::host;

struct Chaos;

impl Guest for Chaos {
    fn on_open(conn: ConnectionId) {
        if host::info(conn).is_some_and(|info| info.path == "/panic-on-open") {
            panic!("chaos: panic on open");
        }
    }

    fn on_text(conn: ConnectionId, text: String) {
        match text.as_str() {
            "panic" => panic!("chaos: panic on command"),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    // `black_box` keeps the optimiser from proving the loop has no effect.
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => core::arch::wasm32::unreachable(),
            _ => {
                let _ = host::send_text(conn, &text);
            }
        }
    }

    fn on_binary(conn: ConnectionId, data: Vec<u8>) {
        let _ = host::send_binary(conn, &data);
    }

    fn on_close(_conn: ConnectionId, _code: u16, _reason: String) {}
}

export!(Chaos);
