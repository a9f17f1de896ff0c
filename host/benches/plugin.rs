//! Micro-benchmarks of plugin calls, on the caller's thread (no queues, no sockets):
//!
//! - "plugin call": one `on-text` into the echo plugin and its `send-text` back to the
//!   host, at 20 B and 16 KiB, for every echo plugin found (one per language).
//! - "plugin call style": the same call of the Rust echo plugin in the sync style the host
//!   serves with and in wasmtime's async style, which would let a long call give its
//!   thread back at every epoch tick.
//! - "plugin api": what API 0.2 costs where it is used, with the `api` test plugin: one
//!   `on-upgrade` (a handshake's decision), and a hot reload that carries the plugin's
//!   state through `snapshot`/`restore`, with 40 bytes and with 8 MiB of it (the
//!   difference is the cost of carrying the state; the rest is instantiation).
//!
//! `cargo bench -p wsplug-host --bench plugin` after `make plugins`; `WSPLUG_PLUGIN_DIR`
//! overrides where the `.wasm` files are looked for.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use wsplug::plugin::{
    CloseCode, ConnId, ConnectionEvent, ConnectionInfo, Control, Grants, HostError, HostServices, Loader, Outgoing,
    PluginLimits, Runner, UpgradeDecision, UpgradeRequest,
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
    /// The last text sent.
    last_text: std::sync::Mutex<String>,
}

impl HostServices for Sink {
    fn opened(&self, _: ConnId) {}
    fn closed(&self, _: ConnId) {}
    fn send(&self, _: ConnId, message: Outgoing) -> Result<(), HostError> {
        let len = match &message {
            Outgoing::Text(text) => {
                *self.last_text.lock().unwrap() = text.as_str().to_owned();
                text.as_str().len()
            }
            Outgoing::Binary(data) => data.len(),
        };
        self.sent_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
    fn close(&self, _: ConnId, _: CloseCode, _: String) -> Result<(), HostError> {
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
    fn set_attachment(&self, _: ConnId, _: Vec<u8>) -> Result<(), HostError> {
        Ok(())
    }
    fn attachment(&self, _: ConnId) -> Option<bytes::Bytes> {
        None
    }
    fn overran(&self, _: ConnId) {}
}

fn plugin_dir() -> PathBuf {
    std::env::var_os("WSPLUG_PLUGIN_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"),
        PathBuf::from,
    )
}

/// One `on-text` call of the Rust echo plugin (0.2), in the sync style the host serves
/// with and in wasmtime's async style (each epoch tick yielding), on the same setup.
fn plugin_call_style(c: &mut Criterion) {
    let loader = Loader::new(Some(std::env::temp_dir().join("wsplug-bench-cache"))).expect("engine");
    let mut group = c.benchmark_group("plugin call style");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for file in ["echo.wasm"] {
        let path = plugin_dir().join(file);
        let loaded = loader.load(&path, Instant::now()).expect("plugin loads");
        let sink = Arc::new(Sink::default());
        let runner = Runner::new(
            loader.engine(),
            loader.load(&path, Instant::now()).expect("plugin loads"),
            sink.clone(),
            PluginLimits::default(),
            Grants::default(),
        )
        .expect("plugin starts");
        for size in SIZES {
            let text = "x".repeat(size);
            let name = file.trim_end_matches(".wasm");
            group.bench_function(format!("sync {name} {size}"), |b| {
                b.iter_custom(|iters| runner.time_sync_calls(&loaded, &text, iters))
            });
            group.bench_function(format!("async {name} {size}"), |b| {
                b.iter_custom(|iters| runtime.block_on(runner.time_async_calls(&loaded, &text, iters)))
            });
        }
    }
    group.finish();
}

fn plugin_call(c: &mut Criterion) {
    // The cache `bench/run.py` serves its plugins from: each plugin is compiled once per
    // version for both (the JavaScript and Python ones take seconds).
    let loader = Loader::new(Some(std::env::temp_dir().join("wsplug-bench-cache"))).expect("engine");
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
        runner.handle(ConnectionEvent::Open(1));
        for size in SIZES {
            let text = "x".repeat(size);
            let before = sink.sent_bytes.load(Ordering::Relaxed);
            runner.handle(ConnectionEvent::Text(1, text.clone()));
            assert_eq!(
                sink.sent_bytes.load(Ordering::Relaxed) - before,
                size,
                "{file} does not echo"
            );
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(format!("{} {size}", file.trim_end_matches(".wasm")), |b| {
                b.iter_batched(
                    || ConnectionEvent::Text(1, text.clone()),
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

/// A runner of `path` over a [`Sink`], with one connection open.
fn runner(loader: &Loader, path: &std::path::Path, sink: Arc<Sink>) -> Runner {
    let loaded = loader.load(path, Instant::now()).expect("plugin loads");
    let mut runner = Runner::new(
        loader.engine(),
        loaded,
        sink,
        PluginLimits::default(),
        Grants::default(),
    )
    .expect("plugin starts");
    runner.handle(ConnectionEvent::Open(1));
    runner
}

fn plugin_api(c: &mut Criterion) {
    let path = plugin_dir().join("api.wasm");
    assert!(path.exists(), "{} not built: run `make plugins`", path.display());
    let cache = std::env::temp_dir().join(format!("wsplug-bench-api-{}", std::process::id()));
    let loader = Loader::new(Some(cache.clone())).expect("engine");
    let mut group = c.benchmark_group("plugin api");

    let sink = Arc::new(Sink::default());
    let mut hook = runner(&loader, &path, sink.clone());
    let request = UpgradeRequest {
        remote_address: "127.0.0.1:50000".into(),
        path: "/chat".into(),
        query: Some("name=alice".into()),
        headers: [
            ("host", "127.0.0.1:9001"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("origin", "http://127.0.0.1:9001"),
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .to_vec(),
        protocols: Vec::new(),
    };
    group.bench_function("on-upgrade", |b| {
        b.iter_batched(
            || {
                let (reply, decision) = tokio::sync::oneshot::channel();
                (Control::Upgrade(Box::new(request.clone()), reply), decision)
            },
            |(event, mut decision)| {
                hook.handle(black_box(event));
                assert!(matches!(decision.try_recv(), Ok(UpgradeDecision::Accept { .. })));
            },
            BatchSize::SmallInput,
        );
    });

    group.sample_size(10);
    for (name, state) in [("reload, state 40 B", 0usize), ("reload, state 8 MiB", 8 << 20)] {
        let mut reloading = runner(&loader, &path, sink.clone());
        reloading.handle(ConnectionEvent::Text(1, format!("grow {state}")));
        group.bench_function(name, |b| {
            b.iter_batched(
                || loader.load(&path, Instant::now()).expect("plugin loads"),
                |loaded| reloading.reload(loaded).expect("swapped in"),
                BatchSize::PerIteration,
            );
        });
        // Every reload carried the state: a failed one keeps the old version, whose
        // count of restores then falls behind.
        reloading.handle(ConnectionEvent::Text(1, "blob".into()));
        let blob = sink.last_text.lock().unwrap().clone();
        assert!(
            blob.starts_with(&format!("blob {state} ")),
            "{name}: the state is gone: {blob}"
        );
        reloading.handle(ConnectionEvent::Text(1, "restores".into()));
        let restores = sink.last_text.lock().unwrap().clone();
        let restores: u64 = restores.trim_start_matches("restores ").parse().expect("restores N");
        assert!(restores > 0, "{name}: no reload carried the state");
    }
    group.finish();
    let _ = std::fs::remove_dir_all(cache);
}

criterion_group!(benches, plugin_call_style, plugin_call, plugin_api);
criterion_main!(benches);
