//! Host side of the `wsplug:plugin` worlds, 0.1.0 (`wit/0.1.0`) and 0.2.0 (`wit/`):
//! generated bindings, and the imports of both versions served by one [`HostState`]
//! over [`HostServices`], [`Timers`] and the key-value store. The 0.1 imports are the
//! 0.2 ones minus what 0.2 added, so they forward to them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::deadline::CallClock;
use super::output_gate::OutputGate;
use super::replies::Replying;
use super::timers::Timers;
use super::{CloseCode, ConnId, ConnectionInfo, HostError, HostServices, MAX_ATTACHMENT, Outgoing, TimerId};
use super::{UpgradeDecision, UpgradeRequest};
use crate::store::{self, KeyValue, StoreError};
use crate::ws::close;

/// Bindings of `wsplug:plugin@0.2.0`: imports and the exports every 0.2 plugin has.
pub mod v2 {
    wasmtime::component::bindgen!({ world: "plugin", path: "../wit" });
}

/// The optional exports of 0.2 (the `handshake` and `state` interfaces), sharing the
/// types and imports of [`v2`].
pub mod v2_optional {
    wasmtime::component::bindgen!({
        world: "plugin-handshake-state",
        path: "../wit",
        with: {
            "wsplug:plugin/types": super::v2::wsplug::plugin::types,
            "wsplug:plugin/host": super::v2::wsplug::plugin::host,
            "wsplug:plugin/timers": super::v2::wsplug::plugin::timers,
            "wsplug:plugin/store": super::v2::wsplug::plugin::store,
        },
    });
    pub use self::exports::wsplug::plugin::{handshake, state};
}

/// The required exports of 0.2 called in wasmtime's async style, with the same (sync)
/// imports: how a stateless plugin's connections' threads call them, so that a call
/// that runs long gives its thread back at every epoch tick.
pub mod v2_async {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        exports: { default: async },
        with: {
            "wsplug:plugin/types": super::v2::wsplug::plugin::types,
            "wsplug:plugin/host": super::v2::wsplug::plugin::host,
            "wsplug:plugin/timers": super::v2::wsplug::plugin::timers,
            "wsplug:plugin/store": super::v2::wsplug::plugin::store,
        },
    });
}

/// Bindings of `wsplug:plugin@0.1.0`.
pub mod v1 {
    wasmtime::component::bindgen!({ world: "plugin", path: "../wit/0.1.0" });
}

/// The exports of 0.1 called in the async style (see [`v2_async`]).
pub mod v1_async {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/0.1.0",
        exports: { default: async },
        with: {
            "wsplug:plugin/types": super::v1::wsplug::plugin::types,
            "wsplug:plugin/host": super::v1::wsplug::plugin::host,
        },
    });
}

use v2::wsplug::plugin::types;

/// The version of the WIT world a plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    /// `wsplug:plugin@0.1.0`.
    V0_1,
    /// `wsplug:plugin@0.2.0`.
    V0_2,
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V0_1 => "0.1.0",
            Self::V0_2 => "0.2.0",
        })
    }
}

/// The memory cap of an instance, which remembers that it refused to grow: a trap that
/// follows is the cap's doing (metrics count it as `memory`).
pub struct MemoryLimit {
    limits: StoreLimits,
    /// A growth was refused since the current call began.
    pub(super) refused: bool,
}

impl MemoryLimit {
    /// A cap of `bytes` of linear memory.
    pub fn new(bytes: usize) -> Self {
        Self {
            limits: wasmtime::StoreLimitsBuilder::new().memory_size(bytes).build(),
            refused: false,
        }
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.refused |= !allowed;
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The data of one plugin instance's store.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: MemoryLimit,
    pub(super) services: Arc<dyn HostServices>,
    /// The gate in `services`, if any: replies kept beside the call must not pass it.
    pub(super) gate: Option<Arc<OutputGate>>,
    pub(super) timers: Arc<Timers>,
    pub(super) store: Arc<dyn KeyValue>,
    /// The plugin's name, for log lines and as its namespace in the store.
    pub(super) name: Arc<str>,
    /// What the current call has spent of its CPU deadline.
    pub(super) clock: CallClock,
    /// The current call handles a message of a connection on that connection's
    /// thread: its replies to it are kept here.
    pub(super) replying: Option<Replying>,
}

impl HostState {
    /// Runs a host call that may block (on the disk, on a network backend) off the
    /// plugin's deadline.
    fn off_the_clock<R>(&mut self, call: impl FnOnce(&Self) -> R) -> R {
        let started = Instant::now();
        let result = call(self);
        self.clock.waited(started.elapsed());
        result
    }

    /// Sends `message` to `conn`: straight back if the plugin is replying to a message
    /// of `conn` on its connection's thread, through the registry otherwise.
    fn send(&mut self, conn: ConnId, message: Outgoing) -> Result<(), types::Error> {
        if let Some(replying) = &mut self.replying
            && self.gate.as_ref().is_some_and(|gate| gate.may_hold())
        {
            // Output waits for a commit: what was kept goes through the gate first, and
            // everything after it too, so that nothing overtakes it.
            let (to, kept) = replying.divert();
            for message in kept {
                self.services.send(to, message)?;
            }
        }
        let message = match &mut self.replying {
            Some(replying) => replying.keep(conn, message),
            None => Some(message),
        };
        match message {
            None => Ok(()),
            Some(message) => Ok(self.services.send(conn, message)?),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl From<HostError> for types::Error {
    fn from(error: HostError) -> Self {
        match error {
            HostError::Gone => Self::Gone,
            HostError::InvalidCode => Self::InvalidCode,
            HostError::ReasonTooLong => Self::ReasonTooLong,
            // 0.2 has no error of its own for it: a join past the bound is too large.
            HostError::TooLarge | HostError::TooManyGroups => Self::TooLarge,
            HostError::TooManyTimers => Self::TooManyTimers,
            HostError::InvalidDuration => Self::InvalidDuration,
        }
    }
}

impl From<StoreError> for types::StoreError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::TooLarge => Self::TooLarge,
            StoreError::Unavailable(why) => Self::Unavailable(why),
            // 0.2 has no error of its own for it (0.3's `quota-exceeded`).
            quota @ StoreError::QuotaExceeded(_) => Self::Unavailable(quota.to_string()),
        }
    }
}

/// `connection-info` of either version: the same record in two packages.
macro_rules! connection_info_from {
    ($($version:ty),*) => {$(
        impl From<&ConnectionInfo> for $version {
            fn from(info: &ConnectionInfo) -> Self {
                Self {
                    id: info.id,
                    remote_address: info.remote_address.clone(),
                    path: info.path.clone(),
                    query: info.query.clone(),
                    subprotocol: info.subprotocol.clone(),
                    headers: info.headers.to_vec(),
                }
            }
        }
    )*};
}

connection_info_from!(types::ConnectionInfo, v1::wsplug::plugin::types::ConnectionInfo);

impl From<&UpgradeRequest> for types::UpgradeRequest {
    fn from(request: &UpgradeRequest) -> Self {
        Self {
            remote_address: request.remote_address.clone(),
            path: request.path.clone(),
            query: request.query.clone(),
            headers: request.headers.clone(),
            protocols: request.protocols.clone(),
        }
    }
}

impl From<types::UpgradeDecision> for UpgradeDecision {
    fn from(decision: types::UpgradeDecision) -> Self {
        match decision {
            types::UpgradeDecision::Accept(accept) => Self::Accept {
                subprotocol: accept.subprotocol,
                attachment: accept.attachment,
                groups: accept.groups,
            },
            types::UpgradeDecision::Reject(reject) => Self::Reject {
                status: reject.status,
                headers: reject.headers,
                body: reject.body,
            },
        }
    }
}

impl types::Host for HostState {}

impl v2::wsplug::plugin::host::Host for HostState {
    fn send_text(&mut self, conn: ConnId, text: String) -> Result<(), types::Error> {
        self.send(conn, Outgoing::Text(text.into()))
    }

    fn send_binary(&mut self, conn: ConnId, data: Vec<u8>) -> Result<(), types::Error> {
        self.send(conn, Outgoing::Binary(data.into()))
    }

    fn close(&mut self, conn: ConnId, code: u16, reason: String) -> Result<(), types::Error> {
        let code = CloseCode::new(code).ok_or(types::Error::InvalidCode)?;
        if reason.len() > close::MAX_REASON_LEN {
            return Err(types::Error::ReasonTooLong);
        }
        if let Some(replying) = &mut self.replying {
            replying.queued_for(conn);
        }
        Ok(self.services.close(conn, code, reason)?)
    }

    fn broadcast_text(&mut self, text: String, except: Option<ConnId>) -> u32 {
        self.services.broadcast(Outgoing::Text(text.into()), except)
    }

    fn broadcast_binary(&mut self, data: Vec<u8>, except: Option<ConnId>) -> u32 {
        self.services.broadcast(Outgoing::Binary(data.into()), except)
    }

    fn join(&mut self, conn: ConnId, group: String) -> Result<(), types::Error> {
        Ok(self.services.join(conn, &group)?)
    }

    fn leave(&mut self, conn: ConnId, group: String) -> Result<(), types::Error> {
        Ok(self.services.leave(conn, &group)?)
    }

    fn publish_text(&mut self, group: String, text: String, except: Option<ConnId>) -> u32 {
        self.services.publish(&group, Outgoing::Text(text.into()), except)
    }

    fn publish_binary(&mut self, group: String, data: Vec<u8>, except: Option<ConnId>) -> u32 {
        self.services.publish(&group, Outgoing::Binary(data.into()), except)
    }

    fn group_members(&mut self, group: String) -> Vec<ConnId> {
        self.services.group_members(&group)
    }

    fn connections(&mut self) -> Vec<ConnId> {
        self.services.connections()
    }

    fn info(&mut self, conn: ConnId) -> Option<types::ConnectionInfo> {
        // Waiting for another host's facts (Redis) is not the plugin's CPU time.
        self.off_the_clock(|s| s.services.info(conn))
            .map(|info| (&*info).into())
    }

    fn set_attachment(&mut self, conn: ConnId, data: Vec<u8>) -> Result<(), types::Error> {
        if data.len() > MAX_ATTACHMENT {
            return Err(types::Error::TooLarge);
        }
        Ok(self.services.set_attachment(conn, data)?)
    }

    fn attachment(&mut self, conn: ConnId) -> Option<Vec<u8>> {
        self.services.attachment(conn).map(|data| data.to_vec())
    }

    fn log(&mut self, level: types::LogLevel, message: String) {
        let plugin = &*self.name;
        let message = super::output::escaped(&message);
        match level {
            types::LogLevel::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
            types::LogLevel::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            types::LogLevel::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            types::LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            types::LogLevel::Error => tracing::error!(target: "plugin", plugin, "{message}"),
        }
    }
}

impl v2::wsplug::plugin::timers::Host for HostState {
    fn set_timer(&mut self, id: TimerId, delay_ms: u32, repeat_ms: Option<u32>) -> Result<(), types::Error> {
        let ms = |ms: u32| Duration::from_millis(ms.into());
        Ok(self.timers.set(id, ms(delay_ms), repeat_ms.map(ms))?)
    }

    fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.timers.cancel(id)
    }

    fn timer_pending(&mut self, id: TimerId) -> bool {
        self.timers.pending(id)
    }
}

impl v2::wsplug::plugin::store::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, types::StoreError> {
        store::check_sizes(&key, None)?;
        Ok(self.off_the_clock(|s| s.store.get(&s.name, &key))?)
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), types::StoreError> {
        store::check_sizes(&key, Some(&value))?;
        let ttl = ttl_ms.map(Duration::from_millis);
        Ok(self.off_the_clock(|s| s.store.set(&s.name, &key, &value, ttl))?)
    }

    fn delete(&mut self, key: String) -> Result<bool, types::StoreError> {
        store::check_sizes(&key, None)?;
        Ok(self.off_the_clock(|s| s.store.delete(&s.name, &key))?)
    }

    fn list_keys(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, types::StoreError> {
        store::check_sizes(&prefix, None)?;
        Ok(self.off_the_clock(|s| s.store.list_keys(&s.name, &prefix, after.as_deref(), limit))?)
    }
}

/// The 0.1 imports: the same functions as 0.2's `host`, over types of their own.
mod v0_1 {
    use super::v1::wsplug::plugin::{host, types as old};
    use super::v2::wsplug::plugin::host::Host as V2;
    use super::v2::wsplug::plugin::types;
    use super::{ConnId, HostState};

    fn error(error: types::Error) -> old::Error {
        match error {
            types::Error::InvalidCode => old::Error::InvalidCode,
            types::Error::ReasonTooLong => old::Error::ReasonTooLong,
            // Only the 0.2 calls return the others.
            _ => old::Error::Gone,
        }
    }

    fn level_of(level: old::LogLevel) -> types::LogLevel {
        match level {
            old::LogLevel::Trace => types::LogLevel::Trace,
            old::LogLevel::Debug => types::LogLevel::Debug,
            old::LogLevel::Info => types::LogLevel::Info,
            old::LogLevel::Warn => types::LogLevel::Warn,
            old::LogLevel::Error => types::LogLevel::Error,
        }
    }

    impl old::Host for HostState {}

    impl host::Host for HostState {
        fn send_text(&mut self, conn: ConnId, text: String) -> Result<(), old::Error> {
            V2::send_text(self, conn, text).map_err(error)
        }

        fn send_binary(&mut self, conn: ConnId, data: Vec<u8>) -> Result<(), old::Error> {
            V2::send_binary(self, conn, data).map_err(error)
        }

        fn close(&mut self, conn: ConnId, code: u16, reason: String) -> Result<(), old::Error> {
            V2::close(self, conn, code, reason).map_err(error)
        }

        fn broadcast_text(&mut self, text: String, except: Option<ConnId>) -> u32 {
            V2::broadcast_text(self, text, except)
        }

        fn broadcast_binary(&mut self, data: Vec<u8>, except: Option<ConnId>) -> u32 {
            V2::broadcast_binary(self, data, except)
        }

        fn join(&mut self, conn: ConnId, group: String) -> Result<(), old::Error> {
            V2::join(self, conn, group).map_err(error)
        }

        fn leave(&mut self, conn: ConnId, group: String) -> Result<(), old::Error> {
            V2::leave(self, conn, group).map_err(error)
        }

        fn publish_text(&mut self, group: String, text: String, except: Option<ConnId>) -> u32 {
            V2::publish_text(self, group, text, except)
        }

        fn publish_binary(&mut self, group: String, data: Vec<u8>, except: Option<ConnId>) -> u32 {
            V2::publish_binary(self, group, data, except)
        }

        fn group_members(&mut self, group: String) -> Vec<ConnId> {
            V2::group_members(self, group)
        }

        fn connections(&mut self) -> Vec<ConnId> {
            V2::connections(self)
        }

        fn info(&mut self, conn: ConnId) -> Option<old::ConnectionInfo> {
            self.off_the_clock(|s| s.services.info(conn))
                .map(|info| (&*info).into())
        }

        fn log(&mut self, level: old::LogLevel, message: String) {
            V2::log(self, level_of(level), message)
        }
    }
}
