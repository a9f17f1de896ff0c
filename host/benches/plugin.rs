//! Micro-benchmark of a plugin call: one `on-text` into the echo plugin and its
//! `send-text` back to the host, on the caller's thread (no queues, no sockets), at
//! 20 B and 16 KiB. Every echo plugin found in the plugin directory is measured, one
//! per language. `cargo bench -p wsplug-host --bench plugin` after `make plugins`;
//! `WSPLUG_PLUGIN_DIR` overrides where the `.wasm` files are looked for.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use wsplug::plugin::{
    ConnId, ConnectionInfo, Grants, HostError, HostServices, Loader, Outgoing, PluginEvent, PluginLimits, Runner,
};

/// The echo plugin of each language, by file name (`echo` is Rust with the SDK,
/// `echo-raw` Rust on bare wit-bindgen bindings).
const ECHO_PLUGINS: [&str; 5] = [
    "echo.wasm",
    "echo-raw.wasm",
    "echo-c.wasm",
    "echo-js.wasm",
    "echo-py.wasm",
];
const SIZES: [usize; 2] = [20, 16 * 1024];
/// Criterion's group name; `bench/run.py` reads the results from `target/criterion/<GROUP>/`.
const GROUP: &str = "plugin call";

/// Host services that count what the plugin sends and drop it.
#[derive(Default)]
struct Sink {
    sent_bytes: AtomicUsize,
}

impl HostServices for Sink {
    fn opened(&self, _: ConnId) {}
    fn send(&self, _: ConnId, message: Outgoing) -> Result<(), HostError> {
        let len = match &message {
            Outgoing::Text(text) => text.as_str().len(),
            Outgoing::Binary(data) => data.len(),
        };
        self.sent_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
    fn close(&self, _: ConnId, _: u16, _: String) -> Result<(), HostError> {
        Ok(())
    }
    fn broadcast(&self, _: Outgoing, _: Option<ConnId>) -> u32 {
        0
    }
    fn join(&self, _: ConnId, _: &str) -> Result<(), HostError> {
        Ok(())
    }
    fn leave(&self, _: ConnId, _: &str) -> Result<(), HostError> {
        Ok(())
    }
    fn publish(&self, _: &str, _: Outgoing, _: Option<ConnId>) -> u32 {
        0
    }
    fn group_members(&self, _: &str) -> Vec<ConnId> {
        Vec::new()
    }
    fn connections(&self) -> Vec<ConnId> {
        vec![1]
    }
    fn info(&self, _: ConnId) -> Option<Arc<ConnectionInfo>> {
        None
    }
}

fn plugin_dir() -> PathBuf {
    std::env::var_os("WSPLUG_PLUGIN_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"),
        PathBuf::from,
    )
}

fn plugin_call(c: &mut Criterion) {
    let loader = Loader::new(None).expect("engine");
    let mut group = c.benchmark_group(GROUP);
    let mut found = 0;
    for file in ECHO_PLUGINS {
        let path = plugin_dir().join(file);
        if !path.exists() {
            eprintln!("plugin bench: {} not built, skipped", path.display());
            continue;
        }
        found += 1;
        let loaded = loader.load(&path, Instant::now()).expect("plugin loads");
        let sink = Arc::new(Sink::default());
        let mut runner = Runner::new(
            loader.engine(),
            loaded,
            sink.clone(),
            PluginLimits::default(),
            Grants::default(),
        )
        .expect("plugin starts");
        runner.handle(PluginEvent::Open(1));
        for size in SIZES {
            let text = "x".repeat(size);
            let before = sink.sent_bytes.load(Ordering::Relaxed);
            runner.handle(PluginEvent::Text(1, text.clone()));
            assert_eq!(
                sink.sent_bytes.load(Ordering::Relaxed) - before,
                size,
                "{file} does not echo"
            );
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(format!("{} {size}", file.trim_end_matches(".wasm")), |b| {
                b.iter_batched(
                    || PluginEvent::Text(1, text.clone()),
                    |event| runner.handle(black_box(event)),
                    BatchSize::SmallInput,
                );
            });
        }
    }
    group.finish();
    assert!(
        found > 0,
        "no echo plugin in {}: run `make plugins`",
        plugin_dir().display()
    );
}

criterion_group!(benches, plugin_call);
criterion_main!(benches);
