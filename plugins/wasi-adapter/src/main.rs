//! `wasi-adapter OUT`: writes the WASI preview1 reactor adapter to `OUT`.

use wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER;

fn main() {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("usage: wasi-adapter OUT.wasm");
        std::process::exit(2);
    };
    if let Err(error) = std::fs::write(&out, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER) {
        eprintln!("wasi-adapter: cannot write {}: {error}", out.to_string_lossy());
        std::process::exit(1);
    }
}
