//! `wsplug-native-echo`: the wsplug host, same command line, with the echo plugin
//! replaced by native code on the same event path (connection task -> plugin thread
//! -> registry -> connection task). `make bench` compares the WebAssembly echo plugin
//! with it: the difference is what the sandbox costs.

use wsplug::plugin::{HostServices, Outgoing, PluginEvent};

fn main() -> std::process::ExitCode {
    wsplug::app::main(Some(Box::new(echo)))
}

/// Does what `plugins/echo` does: every message goes back to its sender unchanged.
fn echo(services: &dyn HostServices, event: PluginEvent) {
    match event {
        PluginEvent::Text(conn, text) => {
            let _ = services.send(conn, Outgoing::Text(text.into()));
        }
        PluginEvent::Binary(conn, data) => {
            let _ = services.send(conn, Outgoing::Binary(data.into()));
        }
        // Shutdown waits for this: every earlier event has been handled.
        PluginEvent::Barrier(_, done) => {
            let _ = done.send(());
        }
        PluginEvent::Open(_)
        | PluginEvent::Close(..)
        | PluginEvent::Reload(..)
        | PluginEvent::Upgrade(..)
        | PluginEvent::Timer(..) => {}
    }
}
