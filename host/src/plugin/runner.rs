//! Compiles a plugin, instantiates it, and runs its exports on a dedicated thread,
//! fed by a bounded queue of [`PluginEvent`]s.

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::sync::mpsc;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::error::Context as _;
use wasmtime::{Config, Engine, Store, StoreLimitsBuilder, Trap};
use wasmtime_wasi::WasiCtxBuilder;

use super::bindings::{HostState, Plugin, PluginPre};
use super::{HostServices, PluginEvent};
use crate::ws::close;

/// How often the engine's epoch advances; the CPU deadline is counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Resource limits of a plugin.
#[derive(Clone, Copy, Debug)]
pub struct PluginLimits {
    /// CPU time one export call may take before it is interrupted.
    pub deadline: Duration,
    /// Largest linear memory an instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Events that may wait for the plugin; connections stop reading when it is full.
    pub queue_len: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(500),
            memory_bytes: 64 << 20,
            queue_len: 1024,
        }
    }
}

/// The sending side of a running plugin's event queue.
#[derive(Clone)]
pub struct PluginHandle {
    events: mpsc::Sender<PluginEvent>,
}

impl PluginHandle {
    /// The queue that delivers events to the plugin, in order.
    pub fn events(&self) -> &mpsc::Sender<PluginEvent> {
        &self.events
    }
}

/// Loads the component at `path` and starts running it on its own thread.
///
/// Fails if the file cannot be read, is not a component, or does not fit the
/// `wsplug:plugin` world (missing exports, unknown imports).
pub fn spawn(path: &Path, services: Arc<dyn HostServices>, limits: PluginLimits) -> wasmtime::Result<PluginHandle> {
    let name: Arc<str> = path.file_stem().map_or("plugin".into(), |s| s.to_string_lossy().into());
    let mut config = Config::new();
    config.epoch_interruption(true);
    let engine = Engine::new(&config)?;
    let component =
        Component::from_file(&engine, path).with_context(|| format!("cannot load plugin {}", path.display()))?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
    let pre = linker
        .instantiate_pre(&component)
        .and_then(PluginPre::new)
        .with_context(|| format!("plugin {} does not implement the wsplug:plugin world", path.display()))?;

    let factory = InstanceFactory {
        engine: engine.clone(),
        pre,
        services,
        name,
        limits,
    };
    // Instantiate once here so that a plugin that cannot start fails the startup.
    let instance = factory
        .instantiate()
        .with_context(|| format!("cannot instantiate plugin {}", path.display()))?;

    let ticker = engine.weak();
    thread::Builder::new().name("plugin-epoch".into()).spawn(move || {
        while let Some(engine) = ticker.upgrade() {
            engine.increment_epoch();
            drop(engine);
            thread::sleep(EPOCH_TICK);
        }
    })?;

    let (events, queue) = mpsc::channel(limits.queue_len);
    thread::Builder::new()
        .name("plugin".into())
        .spawn(move || factory.run(instance, queue))?;
    Ok(PluginHandle { events })
}

/// One instance of the component in its own store.
struct Instance {
    store: Store<HostState>,
    bindings: Plugin,
}

/// Everything needed to make a fresh instance, after a trap poisons the old one.
struct InstanceFactory {
    engine: Engine,
    pre: PluginPre<HostState>,
    services: Arc<dyn HostServices>,
    name: Arc<str>,
    limits: PluginLimits,
}

impl InstanceFactory {
    fn instantiate(&self) -> wasmtime::Result<Instance> {
        // The sandbox: no files, network, environment or arguments; stderr for panics.
        let wasi = WasiCtxBuilder::new().inherit_stderr().build();
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(self.limits.memory_bytes).build(),
            services: self.services.clone(),
            name: self.name.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        let bindings = self.pre.instantiate(&mut store)?;
        Ok(Instance { store, bindings })
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }

    /// Delivers events until every sender is gone.
    fn run(self, first: Instance, mut queue: mpsc::Receiver<PluginEvent>) {
        let mut instance = Some(first);
        while let Some(event) = queue.blocking_recv() {
            if let PluginEvent::Barrier(_, done) = event {
                let _ = done.send(());
                continue;
            }
            if instance.is_none() {
                instance = self
                    .instantiate()
                    .inspect_err(|e| tracing::error!(plugin = &*self.name, "cannot instantiate plugin: {e:#}"))
                    .ok();
            }
            let Some(current) = instance.as_mut() else {
                tracing::error!(
                    plugin = &*self.name,
                    event = event.export_name(),
                    conn = event.conn(),
                    "no plugin instance: event dropped"
                );
                continue;
            };
            if let Err(error) = self.deliver(current, &event) {
                let trap = error.downcast_ref::<Trap>().map(|t| t.to_string());
                tracing::error!(
                    plugin = &*self.name,
                    export = event.export_name(),
                    conn = event.conn(),
                    trap = trap.as_deref().unwrap_or("error"),
                    "plugin call failed: {error:?}"
                );
                if !matches!(event, PluginEvent::Close(..)) {
                    let _ = self
                        .services
                        .close(event.conn(), close::INTERNAL_ERROR, "internal error".into());
                }
                // A trap poisons the store: the instance is never called again.
                instance = None;
            }
        }
    }

    fn deliver(&self, instance: &mut Instance, event: &PluginEvent) -> wasmtime::Result<()> {
        let Instance { store, bindings } = instance;
        store.set_epoch_deadline(self.deadline_ticks());
        match event {
            PluginEvent::Open(conn) => bindings.call_on_open(store, *conn),
            PluginEvent::Text(conn, text) => bindings.call_on_text(store, *conn, text),
            PluginEvent::Binary(conn, data) => bindings.call_on_binary(store, *conn, data),
            PluginEvent::Close(conn, code, reason) => bindings.call_on_close(store, *conn, *code, reason),
            PluginEvent::Barrier(..) => Ok(()),
        }
    }
}
