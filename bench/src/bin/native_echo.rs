//! `wsplug-native-echo`: the wsplug host, same command line, with the echo plugin
//! replaced by native code on the same event path (connection task -> plugin thread
//! -> registry -> connection task). `make bench` compares the WebAssembly echo plugin
//! with it: the difference is what the sandbox costs.

use wsplug::plugin::{ConnectionEvent, HostServices, Outgoing};

fn main() -> std::process::ExitCode {
    wsplug::app::main(Some(Box::new(echo)))
}

/// Does what `plugins/echo` does: every message goes back to its sender unchanged.
fn echo(services: &dyn HostServices, event: ConnectionEvent) {
    match event {
        ConnectionEvent::Text(conn, text) => {
            let _ = services.send(conn, Outgoing::Text(text.into()));
        }
        ConnectionEvent::Binary(conn, data) => {
            let _ = services.send(conn, Outgoing::Binary(data.into()));
        }
        ConnectionEvent::Open(_) | ConnectionEvent::Close(..) => {}
    }
}
