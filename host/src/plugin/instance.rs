//! One instance of a plugin and how it is made and called: the sandbox every instance
//! is made in (WASI without ambient authority, the memory cap, the deadline's clock),
//! the exports of either API version, and a call of the export an event is for, in
//! wasmtime's sync style (the plugin's own thread) or its async style (a stateless
//! plugin, on the connections' threads: see [`super::deadline`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::bindings::{HostState, MemoryLimit, v1, v1_async, v2, v2_async, v2_optional, v3, v3_async, v3_optional};
use super::deadline::CallClock;
use super::loader::{Linked, Loaded};
use super::output::{LogOutput, Stream};
use super::output_gate::OutputGate;
use super::timers::Timers;
use super::{ConnId, ConnectionEvent, Export, HostServices, TimerId, UpgradeDecision, UpgradeRequest};
use crate::metrics::TrapKind;
use crate::store::{KeyValue, Quota};

/// Resource limits of a plugin.
#[derive(Clone, Copy, Debug)]
pub struct PluginLimits {
    /// CPU time one export call may take before it is interrupted.
    pub deadline: Duration,
    /// Largest linear memory an instance may grow to, in bytes; `None`: the default of
    /// the plugin's language ([`super::language::Language::default_memory_bytes`]).
    pub memory_bytes: Option<usize>,
    /// Events that may wait for the plugin; connections stop reading when it is full.
    pub queue_len: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(500),
            memory_bytes: None,
            queue_len: 1024,
        }
    }
}

impl PluginLimits {
    /// The memory cap of an instance of `loaded`.
    pub fn memory_cap(&self, loaded: &Loaded) -> usize {
        self.memory_bytes
            .unwrap_or_else(|| loaded.language.default_memory_bytes())
    }
}

/// What the operator grants a plugin beyond the default sandbox (no files, network,
/// environment or arguments; clocks and random are always available).
#[derive(Clone, Debug)]
pub struct Grants {
    /// A host directory the plugin may read, mounted at [`DATA_DIR`].
    pub data_dir: Option<PathBuf>,
    /// Where the plugin's key-value store keeps its database (the host's, not mounted).
    pub store_dir: PathBuf,
    /// What the plugin may keep there.
    pub store_quota: Quota,
}

impl Default for Grants {
    fn default() -> Self {
        Self {
            data_dir: None,
            store_dir: crate::store::default_dir(),
            store_quota: Quota::default(),
        }
    }
}

/// Where [`Grants::data_dir`] appears inside the plugin.
pub const DATA_DIR: &str = "/data";

/// One instance of the component in its own store, called in the sync style.
pub(super) struct Instance {
    pub(super) store: Store<HostState>,
    pub(super) exports: Exports,
    pub(super) live: Live,
}

/// An instance's exports, by the version of the world it implements.
pub(super) enum Exports {
    V1(v1::Plugin),
    V2 {
        plugin: v2::Plugin,
        handshake: Option<v2_optional::handshake::Guest>,
        state: Option<v2_optional::state::Guest>,
    },
    V3 {
        plugin: v3::Plugin,
        handshake: Option<v3_optional::handshake::Guest>,
        state: Option<v3_optional::state::Guest>,
        timer_events: Option<v3_optional::timer_events::Guest>,
    },
}

impl Exports {
    /// Calls `on-upgrade`, if the plugin has it.
    pub(super) fn on_upgrade(
        &self,
        store: &mut Store<HostState>,
        request: &UpgradeRequest,
    ) -> Option<wasmtime::Result<UpgradeDecision>> {
        Some(match self {
            Self::V2 {
                handshake: Some(handshake),
                ..
            } => handshake.call_on_upgrade(store, &request.into()).map(Into::into),
            Self::V3 {
                handshake: Some(handshake),
                ..
            } => handshake.call_on_upgrade(store, &request.into()).map(Into::into),
            _ => return None,
        })
    }

    /// Whether the plugin has `snapshot` and `restore`.
    pub(super) fn has_state(&self) -> bool {
        matches!(self, Self::V2 { state: Some(_), .. } | Self::V3 { state: Some(_), .. })
    }

    /// Calls `snapshot`, if the plugin has it.
    pub(super) fn snapshot(&self, store: &mut Store<HostState>) -> Option<wasmtime::Result<Result<Vec<u8>, String>>> {
        Some(match self {
            Self::V2 { state: Some(state), .. } => state.call_snapshot(store),
            Self::V3 { state: Some(state), .. } => state.call_snapshot(store),
            _ => return None,
        })
    }

    /// Calls `restore`, if the plugin has it.
    pub(super) fn restore(
        &self,
        store: &mut Store<HostState>,
        snapshot: &[u8],
    ) -> Option<wasmtime::Result<Result<(), String>>> {
        Some(match self {
            Self::V2 { state: Some(state), .. } => state.call_restore(store, snapshot),
            Self::V3 { state: Some(state), .. } => state.call_restore(store, snapshot),
            _ => return None,
        })
    }
}

/// One instance called in the async style: a connection's events only.
pub(super) struct AsyncInstance {
    pub(super) store: Store<HostState>,
    exports: AsyncExports,
    _live: Live,
}

/// The connection events' exports of either version, called in the async style.
enum AsyncExports {
    V1(v1_async::Plugin),
    V2(v2_async::Plugin),
    V3(v3_async::Plugin),
}

/// Counts an instance in its gauge while it lives.
pub(super) struct Live(IntGauge);

impl Live {
    /// Counts one more in `gauge`, until dropped.
    pub(super) fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Calls the same export of either version's bindings: `$plugin` is bound to the
/// one `$exports` has, in either style.
macro_rules! on_either {
    (async $exports:expr, $plugin:ident => $call:expr) => {
        match $exports {
            AsyncExports::V1($plugin) => $call.await,
            AsyncExports::V2($plugin) => $call.await,
            AsyncExports::V3($plugin) => $call.await,
        }
    };
    ($exports:expr, $plugin:ident => $call:expr) => {
        match $exports {
            Exports::V1($plugin) => $call,
            Exports::V2 { plugin: $plugin, .. } => $call,
            Exports::V3 { plugin: $plugin, .. } => $call,
        }
    };
}

/// What made a call fail: its deadline, the memory cap (it refused a growth during the
/// call), or anything else.
pub(super) fn trap_kind(error: &wasmtime::Error, store: &Store<HostState>) -> TrapKind {
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        TrapKind::Deadline
    } else if store.data().limits.refused {
        TrapKind::Memory
    } else {
        TrapKind::Trap
    }
}

/// What every instance of a plugin is made with: the engine, the host's services, the
/// limits and grants, and the host-side state that outlives instances.
#[derive(Clone)]
pub(super) struct Sandbox {
    pub(super) engine: Engine,
    /// The host's services, as given.
    host: Arc<dyn HostServices>,
    /// What the plugin's calls reach: `host`, behind `gate` if there is one.
    services: Arc<dyn HostServices>,
    /// Holds output while the store's writes before it are not durable, for a store
    /// whose writes return before their commit.
    pub(super) gate: Option<Arc<OutputGate>>,
    pub(super) limits: PluginLimits,
    pub(super) grants: Grants,
    /// The plugin's timers: the host's, so they outlive instances and versions.
    pub(super) timers: Arc<Timers>,
    /// The key-value store its `store` imports use.
    pub(super) store: Arc<dyn KeyValue>,
    /// Counts live instances.
    pub(super) live: IntGauge,
}

impl Sandbox {
    /// A sandbox whose instances reach `host` and use `store`.
    pub(super) fn new(
        engine: Engine,
        host: Arc<dyn HostServices>,
        limits: PluginLimits,
        grants: Grants,
        store: Arc<dyn KeyValue>,
    ) -> Self {
        let mut sandbox = Self {
            engine,
            services: host.clone(),
            host,
            gate: None,
            limits,
            grants,
            timers: Timers::new(),
            store: store.clone(),
            live: IntGauge::new("detached", "instances").expect("a valid name"),
        };
        sandbox.use_store(store);
        sandbox
    }

    /// Serves the `store` imports from `store`, with an output gate in front of the
    /// host's services if its writes return before they are durable.
    pub(super) fn use_store(&mut self, store: Arc<dyn KeyValue>) {
        self.gate = store
            .commits()
            .map(|commits| OutputGate::new(self.host.clone(), commits));
        self.services = match &self.gate {
            Some(gate) => gate.clone(),
            None => self.host.clone(),
        };
        self.store = store;
    }

    /// The services the plugin's host calls reach.
    pub(super) fn services(&self) -> &Arc<dyn HostServices> {
        &self.services
    }

    /// A store for an instance of `loaded`, whose calls are in the async style if
    /// `yields`, ready for instantiation (which runs under the deadline too).
    fn store(&self, loaded: &Loaded, yields: bool) -> wasmtime::Result<Store<HostState>> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(LogOutput::new(loaded.name.clone(), Stream::Stdout));
        wasi.stderr(LogOutput::new(loaded.name.clone(), Stream::Stderr));
        if let Some(dir) = &self.grants.data_dir {
            wasi.preopened_dir(dir, DATA_DIR, FsPerms::ReadOnly)?;
        }
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: MemoryLimit::new(self.limits.memory_cap(loaded)),
            services: self.services.clone(),
            gate: self.gate.clone(),
            timers: self.timers.clone(),
            store: self.store.clone(),
            name: loaded.name.clone(),
            clock: CallClock::new(self.limits.deadline, yields),
            replying: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|mut store| store.data_mut().clock.tick());
        start_call(&mut store);
        Ok(store)
    }

    /// A new instance of `loaded`, called in the sync style.
    pub(super) fn instantiate(&self, loaded: &Loaded) -> wasmtime::Result<Instance> {
        let mut store = self.store(loaded, false)?;
        let exports = match &loaded.linked {
            Linked::V1(pre) => Exports::V1(pre.instantiate(&mut store)?),
            Linked::V2 {
                pre,
                exports,
                handshake,
                state,
            } => {
                let instance = pre.instantiate(&mut store)?;
                Exports::V2 {
                    plugin: exports.load(&mut store, &instance)?,
                    handshake: handshake.as_ref().map(|h| h.load(&mut store, &instance)).transpose()?,
                    state: state.as_ref().map(|s| s.load(&mut store, &instance)).transpose()?,
                }
            }
            Linked::V3 {
                pre,
                exports,
                handshake,
                state,
                timer_events,
            } => {
                let instance = pre.instantiate(&mut store)?;
                Exports::V3 {
                    plugin: exports.load(&mut store, &instance)?,
                    handshake: handshake.as_ref().map(|h| h.load(&mut store, &instance)).transpose()?,
                    state: state.as_ref().map(|s| s.load(&mut store, &instance)).transpose()?,
                    timer_events: timer_events
                        .as_ref()
                        .map(|t| t.load(&mut store, &instance))
                        .transpose()?,
                }
            }
        };
        Ok(Instance {
            store,
            exports,
            live: Live::new(&self.live),
        })
    }

    /// A new instance of `loaded`, called in the async style.
    pub(super) async fn instantiate_async(&self, loaded: &Loaded) -> wasmtime::Result<AsyncInstance> {
        let mut store = self.store(loaded, true)?;
        let exports = match &loaded.linked {
            Linked::V1(pre) => {
                let pre = v1_async::PluginPre::new(pre.instance_pre().clone())?;
                AsyncExports::V1(pre.instantiate_async(&mut store).await?)
            }
            Linked::V2 { pre, .. } => {
                let pre = v2_async::PluginPre::new(pre.clone())?;
                AsyncExports::V2(pre.instantiate_async(&mut store).await?)
            }
            Linked::V3 { pre, .. } => {
                let pre = v3_async::PluginPre::new(pre.clone())?;
                AsyncExports::V3(pre.instantiate_async(&mut store).await?)
            }
        };
        Ok(AsyncInstance {
            store,
            exports,
            _live: Live::new(&self.live),
        })
    }
}

/// Starts the deadline of an export call (see [`super::deadline`]).
pub(super) fn start_call(store: &mut Store<HostState>) {
    let state = store.data_mut();
    state.limits.refused = false;
    let ticks = state.clock.start();
    store.set_epoch_deadline(ticks);
}

/// An export call of the plugin's thread: a connection's event, or a timer.
#[derive(Clone, Copy, Debug)]
pub(super) enum Call<'a> {
    /// `on-open`, `on-text`, `on-binary` or `on-close`.
    Event(&'a ConnectionEvent),
    /// `on-timer`.
    Timer(TimerId),
}

impl Call<'_> {
    /// The export it calls.
    pub(super) fn export(self) -> Export {
        match self {
            Call::Event(event) => event.export(),
            Call::Timer(_) => Export::OnTimer,
        }
    }

    /// The connection it is about, if any.
    pub(super) fn conn(self) -> Option<ConnId> {
        match self {
            Call::Event(event) => Some(event.conn()),
            Call::Timer(_) => None,
        }
    }
}

/// Makes `call` in the sync style, with a fresh CPU deadline.
pub(super) fn deliver(instance: &mut Instance, call: Call) -> wasmtime::Result<()> {
    let Instance { store, exports, .. } = instance;
    start_call(store);
    match call {
        Call::Event(ConnectionEvent::Open(conn)) => on_either!(exports, p => p.call_on_open(store, *conn)),
        Call::Event(ConnectionEvent::Text(conn, text)) => {
            on_either!(exports, p => p.call_on_text(&mut *store, *conn, text))
        }
        Call::Event(ConnectionEvent::Binary(conn, data)) => {
            on_either!(exports, p => p.call_on_binary(&mut *store, *conn, data))
        }
        Call::Event(ConnectionEvent::Close(conn, code, reason)) => {
            on_either!(exports, p => p.call_on_close(&mut *store, *conn, *code, reason))
        }
        Call::Timer(id) => match exports {
            Exports::V2 { plugin, .. } => plugin.call_on_timer(store, id),
            Exports::V3 {
                timer_events: Some(timer_events),
                ..
            } => timer_events.call_on_timer(store, id),
            // A 0.1 plugin, and a 0.3 plugin without `timer-events`, cannot set timers.
            Exports::V1(_) | Exports::V3 { .. } => Ok(()),
        },
    }
}

/// Calls the export for a connection's `event` in the async style, with a fresh CPU
/// deadline.
pub(super) async fn deliver_async(instance: &mut AsyncInstance, event: &ConnectionEvent) -> wasmtime::Result<()> {
    let AsyncInstance { store, exports, .. } = instance;
    start_call(store);
    match event {
        ConnectionEvent::Open(conn) => on_either!(async exports, p => p.call_on_open(&mut *store, *conn)),
        ConnectionEvent::Text(conn, text) => on_either!(async exports, p => p.call_on_text(&mut *store, *conn, text)),
        ConnectionEvent::Binary(conn, data) => {
            on_either!(async exports, p => p.call_on_binary(&mut *store, *conn, data))
        }
        ConnectionEvent::Close(conn, code, reason) => {
            on_either!(async exports, p => p.call_on_close(&mut *store, *conn, *code, reason))
        }
    }
}
