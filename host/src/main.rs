//! `host`: runs a wsplug WebSocket server with one plugin. Settings come from the
//! command line and an optional TOML file (see `wsplug::config`).

fn main() -> std::process::ExitCode {
    wsplug::app::main(None)
}
