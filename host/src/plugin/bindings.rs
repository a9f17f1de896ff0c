//! Host side of the `wsplug:plugin` worlds, 0.1.0 (`wit/0.1.0`), 0.2.0 (`wit/0.2.0`)
//! and 0.3.0 (`wit/`): generated bindings, and the imports of every version served by
//! one [`HostState`] over [`HostServices`], [`Timers`] and the key-value store. Each
//! older version's imports are a subset of the next one's, over types of their own, so
//! they forward to the 0.3 ones and narrow what those return (see [`older`]).

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

/// Bindings of `wsplug:plugin@0.3.0`: the imports of its `plugin` world and the exports
/// every 0.3 plugin has.
pub mod v3 {
    wasmtime::component::bindgen!({ world: "plugin", path: "../wit" });
}

/// The rest of 0.3, sharing the types and imports of [`v3`]: the `timers` import of the
/// `-timers` worlds, and the optional exports (`handshake`, `state`, `timer-events`).
pub mod v3_optional {
    wasmtime::component::bindgen!({
        world: "plugin-handshake-state-timers",
        path: "../wit",
        with: {
            "wsplug:plugin/types": super::v3::wsplug::plugin::types,
            "wsplug:plugin/host": super::v3::wsplug::plugin::host,
            "wsplug:plugin/history": super::v3::wsplug::plugin::history,
            "wsplug:plugin/store": super::v3::wsplug::plugin::store,
        },
    });
    pub use self::exports::wsplug::plugin::{handshake, state, timer_events};
}

/// The required exports of 0.3 called in wasmtime's async style, with the same (sync)
/// imports: how a stateless plugin's connections' threads call them, so that a call
/// that runs long gives its thread back at every epoch tick.
pub mod v3_async {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        exports: { default: async },
        with: {
            "wsplug:plugin/types": super::v3::wsplug::plugin::types,
            "wsplug:plugin/host": super::v3::wsplug::plugin::host,
            "wsplug:plugin/history": super::v3::wsplug::plugin::history,
            "wsplug:plugin/store": super::v3::wsplug::plugin::store,
        },
    });
}

/// Bindings of `wsplug:plugin@0.2.0`: imports and the exports every 0.2 plugin has.
pub mod v2 {
    wasmtime::component::bindgen!({ world: "plugin", path: "../wit/0.2.0" });
}

/// The optional exports of 0.2 (the `handshake` and `state` interfaces), sharing the
/// types and imports of [`v2`].
pub mod v2_optional {
    wasmtime::component::bindgen!({
        world: "plugin-handshake-state",
        path: "../wit/0.2.0",
        with: {
            "wsplug:plugin/types": super::v2::wsplug::plugin::types,
            "wsplug:plugin/host": super::v2::wsplug::plugin::host,
            "wsplug:plugin/timers": super::v2::wsplug::plugin::timers,
            "wsplug:plugin/store": super::v2::wsplug::plugin::store,
        },
    });
    pub use self::exports::wsplug::plugin::{handshake, state};
}

/// The required exports of 0.2 called in the async style (see [`v3_async`]).
pub mod v2_async {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/0.2.0",
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

/// The exports of 0.1 called in the async style (see [`v3_async`]).
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

use v3::wsplug::plugin::types;

/// The version of the WIT world a plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    /// `wsplug:plugin@0.1.0`.
    V0_1,
    /// `wsplug:plugin@0.2.0`.
    V0_2,
    /// `wsplug:plugin@0.3.0`.
    V0_3,
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V0_1 => "0.1.0",
            Self::V0_2 => "0.2.0",
            Self::V0_3 => "0.3.0",
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
            && self
                .gate
                .as_ref()
                .is_some_and(|gate| gate.may_hold() || gate.has_held())
        {
            // Output waits for a commit, or has waited (see `OutputGate::has_held`): what
            // was kept goes through the gate first, and everything after it too, so that
            // nothing overtakes it.
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

impl HostState {
    /// Output for many connections (a broadcast, a publish), which takes their queues:
    /// the replies kept so far precede it, the later ones take the queue after it.
    fn fan_out<R>(&mut self, send: impl FnOnce(&dyn HostServices) -> R) -> R {
        if let Some(replying) = &mut self.replying {
            replying.queued_for_many();
        }
        send(&*self.services)
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
            HostError::TooLarge => Self::TooLarge,
            HostError::TooManyGroups => Self::TooManyGroups,
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
            StoreError::QuotaExceeded(which) => Self::QuotaExceeded(which),
        }
    }
}

/// `connection-info` of any version: the same record in three packages.
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

connection_info_from!(
    types::ConnectionInfo,
    v2::wsplug::plugin::types::ConnectionInfo,
    v1::wsplug::plugin::types::ConnectionInfo
);

/// The handshake's records of 0.2 and 0.3: the same in two packages.
macro_rules! handshake_records {
    ($($types:ident)::+) => {
        impl From<&UpgradeRequest> for $($types)::+::UpgradeRequest {
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

        impl From<$($types)::+::UpgradeDecision> for UpgradeDecision {
            fn from(decision: $($types)::+::UpgradeDecision) -> Self {
                match decision {
                    $($types)::+::UpgradeDecision::Accept(accept) => Self::Accept {
                        subprotocol: accept.subprotocol,
                        attachment: accept.attachment,
                        groups: accept.groups,
                    },
                    $($types)::+::UpgradeDecision::Reject(reject) => Self::Reject {
                        status: reject.status,
                        headers: reject.headers,
                        body: reject.body,
                    },
                }
            }
        }
    };
}

handshake_records!(types);
handshake_records!(v2::wsplug::plugin::types);

/// Text given as bytes, checked once: `invalid-utf8` if it is not UTF-8.
fn text_of(bytes: Vec<u8>) -> Result<Outgoing, types::Error> {
    bytes::Bytes::from(bytes)
        .try_into()
        .map(Outgoing::Text)
        .map_err(|_| types::Error::InvalidUtf8)
}

/// What a publish to `group` did. No group keeps history yet, so none has a position.
fn published(delivered: u32) -> types::Published {
    types::Published {
        delivered,
        position: None,
    }
}

impl types::Host for HostState {}

impl v3::wsplug::plugin::host::Host for HostState {
    fn send_text(&mut self, conn: ConnId, text: String) -> Result<(), types::Error> {
        self.send(conn, Outgoing::Text(text.into()))
    }

    fn send_text_utf8(&mut self, conn: ConnId, text: Vec<u8>) -> Result<(), types::Error> {
        self.send(conn, text_of(text)?)
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
        self.fan_out(|services| services.broadcast(Outgoing::Text(text.into()), except))
    }

    fn broadcast_text_utf8(&mut self, text: Vec<u8>, except: Option<ConnId>) -> Result<u32, types::Error> {
        let text = text_of(text)?;
        Ok(self.fan_out(|services| services.broadcast(text, except)))
    }

    fn broadcast_binary(&mut self, data: Vec<u8>, except: Option<ConnId>) -> u32 {
        self.fan_out(|services| services.broadcast(Outgoing::Binary(data.into()), except))
    }

    fn join(&mut self, conn: ConnId, group: String) -> Result<(), types::Error> {
        Ok(self.services.join(conn, &group)?)
    }

    fn leave(&mut self, conn: ConnId, group: String) -> Result<(), types::Error> {
        Ok(self.services.leave(conn, &group)?)
    }

    fn publish_text(&mut self, group: String, text: String, except: Option<ConnId>) -> types::Published {
        published(self.fan_out(|services| services.publish(&group, Outgoing::Text(text.into()), except)))
    }

    fn publish_text_utf8(
        &mut self,
        group: String,
        text: Vec<u8>,
        except: Option<ConnId>,
    ) -> Result<types::Published, types::Error> {
        let text = text_of(text)?;
        Ok(published(
            self.fan_out(|services| services.publish(&group, text, except)),
        ))
    }

    fn publish_binary(&mut self, group: String, data: Vec<u8>, except: Option<ConnId>) -> types::Published {
        published(self.fan_out(|services| services.publish(&group, Outgoing::Binary(data.into()), except)))
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

/// No group keeps history yet: every stream call answers `no-history`, which is what
/// the contract says of a group no history setting names.
impl v3::wsplug::plugin::history::Host for HostState {
    fn group_position(&mut self, _group: String) -> Result<types::Position, types::HistoryError> {
        Err(types::HistoryError::NoHistory)
    }

    fn replay(&mut self, _conn: ConnId, _group: String, _after: types::Position) -> Result<u32, types::HistoryError> {
        Err(types::HistoryError::NoHistory)
    }

    fn read(
        &mut self,
        _group: String,
        _after: Option<types::Position>,
        _limit: u32,
    ) -> Result<Vec<types::Publication>, types::HistoryError> {
        Err(types::HistoryError::NoHistory)
    }
}

impl v3_optional::wsplug::plugin::timers::Host for HostState {
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

impl v3::wsplug::plugin::store::Host for HostState {
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

    fn remove(&mut self, key: String) -> Result<(), types::StoreError> {
        store::check_sizes(&key, None)?;
        Ok(self.off_the_clock(|s| s.store.remove(&s.name, &key))?)
    }

    fn sync(&mut self) -> Result<(), types::StoreError> {
        Ok(self.off_the_clock(|s| s.store.sync())?)
    }
}

/// The 0.2 and 0.1 imports: the 0.3 functions they share, over types of their own,
/// with what 0.3 returns narrowed to what they can say.
pub mod older {
    use super::v3::wsplug::plugin::host::Host as V3;
    use super::v3::wsplug::plugin::store::Host as V3Store;
    use super::v3::wsplug::plugin::types;
    use super::v3_optional::wsplug::plugin::timers::Host as V3Timers;
    use super::{ConnId, HostState, TimerId, v1, v2};

    /// An error of 0.3 as 0.2 says it.
    pub fn error_v2(error: types::Error) -> v2::wsplug::plugin::types::Error {
        use v2::wsplug::plugin::types::Error as Old;
        match error {
            types::Error::Gone => Old::Gone,
            types::Error::InvalidCode => Old::InvalidCode,
            types::Error::ReasonTooLong => Old::ReasonTooLong,
            // 0.2 has no error of its own for it: a join past the bound is too large.
            types::Error::TooLarge | types::Error::TooManyGroups => Old::TooLarge,
            types::Error::TooManyTimers => Old::TooManyTimers,
            types::Error::InvalidDuration => Old::InvalidDuration,
            // Only the `-utf8` calls, which 0.2 lacks, return it.
            types::Error::InvalidUtf8 => Old::TooLarge,
        }
    }

    /// A store error of 0.3 as 0.2 says it: a quota is one more reason the store is
    /// unavailable.
    pub fn store_error_v2(error: types::StoreError) -> v2::wsplug::plugin::types::StoreError {
        use v2::wsplug::plugin::types::StoreError as Old;
        match error {
            types::StoreError::TooLarge => Old::TooLarge,
            types::StoreError::Unavailable(why) => Old::Unavailable(why),
            types::StoreError::QuotaExceeded(which) => {
                Old::Unavailable(crate::store::StoreError::QuotaExceeded(which).to_string())
            }
        }
    }

    /// An error of 0.3 as 0.1 says it.
    fn error_v1(error: types::Error) -> v1::wsplug::plugin::types::Error {
        use v1::wsplug::plugin::types::Error as Old;
        match error {
            types::Error::InvalidCode => Old::InvalidCode,
            types::Error::ReasonTooLong => Old::ReasonTooLong,
            // Only calls 0.1 lacks return the others.
            _ => Old::Gone,
        }
    }

    /// The log levels of an older version, which are 0.3's.
    macro_rules! level_of {
        ($level:expr, $old:path) => {{
            use $old as Old;
            match $level {
                Old::Trace => types::LogLevel::Trace,
                Old::Debug => types::LogLevel::Debug,
                Old::Info => types::LogLevel::Info,
                Old::Warn => types::LogLevel::Warn,
                Old::Error => types::LogLevel::Error,
            }
        }};
    }

    /// The `host` functions 0.1 and 0.2 share, forwarded to 0.3 with `$error` narrowing
    /// the errors.
    macro_rules! shared_host_functions {
        ($old:ident, $error:ident) => {
            fn send_text(&mut self, conn: ConnId, text: String) -> Result<(), $old::Error> {
                V3::send_text(self, conn, text).map_err($error)
            }

            fn send_binary(&mut self, conn: ConnId, data: Vec<u8>) -> Result<(), $old::Error> {
                V3::send_binary(self, conn, data).map_err($error)
            }

            fn close(&mut self, conn: ConnId, code: u16, reason: String) -> Result<(), $old::Error> {
                V3::close(self, conn, code, reason).map_err($error)
            }

            fn broadcast_text(&mut self, text: String, except: Option<ConnId>) -> u32 {
                V3::broadcast_text(self, text, except)
            }

            fn broadcast_binary(&mut self, data: Vec<u8>, except: Option<ConnId>) -> u32 {
                V3::broadcast_binary(self, data, except)
            }

            fn join(&mut self, conn: ConnId, group: String) -> Result<(), $old::Error> {
                V3::join(self, conn, group).map_err($error)
            }

            fn leave(&mut self, conn: ConnId, group: String) -> Result<(), $old::Error> {
                V3::leave(self, conn, group).map_err($error)
            }

            fn publish_text(&mut self, group: String, text: String, except: Option<ConnId>) -> u32 {
                V3::publish_text(self, group, text, except).delivered
            }

            fn publish_binary(&mut self, group: String, data: Vec<u8>, except: Option<ConnId>) -> u32 {
                V3::publish_binary(self, group, data, except).delivered
            }

            fn group_members(&mut self, group: String) -> Vec<ConnId> {
                V3::group_members(self, group)
            }

            fn connections(&mut self) -> Vec<ConnId> {
                V3::connections(self)
            }

            fn info(&mut self, conn: ConnId) -> Option<$old::ConnectionInfo> {
                self.off_the_clock(|s| s.services.info(conn))
                    .map(|info| (&*info).into())
            }

            fn log(&mut self, level: $old::LogLevel, message: String) {
                V3::log(self, level_of!(level, $old::LogLevel), message)
            }
        };
    }

    mod v0_2 {
        use super::super::v2::wsplug::plugin::{host, store, timers, types as old};
        use super::*;

        impl old::Host for HostState {}

        impl host::Host for HostState {
            shared_host_functions!(old, error_v2);

            fn set_attachment(&mut self, conn: ConnId, data: Vec<u8>) -> Result<(), old::Error> {
                V3::set_attachment(self, conn, data).map_err(error_v2)
            }

            fn attachment(&mut self, conn: ConnId) -> Option<Vec<u8>> {
                V3::attachment(self, conn)
            }
        }

        impl timers::Host for HostState {
            fn set_timer(&mut self, id: TimerId, delay_ms: u32, repeat_ms: Option<u32>) -> Result<(), old::Error> {
                V3Timers::set_timer(self, id, delay_ms, repeat_ms).map_err(error_v2)
            }

            fn cancel_timer(&mut self, id: TimerId) -> bool {
                V3Timers::cancel_timer(self, id)
            }

            fn timer_pending(&mut self, id: TimerId) -> bool {
                V3Timers::timer_pending(self, id)
            }
        }

        impl store::Host for HostState {
            fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, old::StoreError> {
                V3Store::get(self, key).map_err(store_error_v2)
            }

            fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), old::StoreError> {
                V3Store::set(self, key, value, ttl_ms).map_err(store_error_v2)
            }

            fn delete(&mut self, key: String) -> Result<bool, old::StoreError> {
                V3Store::delete(self, key).map_err(store_error_v2)
            }

            fn list_keys(
                &mut self,
                prefix: String,
                after: Option<String>,
                limit: u32,
            ) -> Result<Vec<String>, old::StoreError> {
                V3Store::list_keys(self, prefix, after, limit).map_err(store_error_v2)
            }
        }
    }

    mod v0_1 {
        use super::super::v1::wsplug::plugin::{host, types as old};
        use super::*;

        impl old::Host for HostState {}

        impl host::Host for HostState {
            shared_host_functions!(old, error_v1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_reaches_each_version_in_its_own_words() {
        let quota = || StoreError::QuotaExceeded("1000 keys at most".into());
        assert!(matches!(
            types::StoreError::from(quota()),
            types::StoreError::QuotaExceeded(which) if which == "1000 keys at most"
        ));
        assert!(matches!(
            older::store_error_v2(quota().into()),
            v2::wsplug::plugin::types::StoreError::Unavailable(why) if why == "quota exceeded: 1000 keys at most"
        ));
    }

    #[test]
    fn errors_0_2_cannot_name_are_narrowed_to_ones_it_can() {
        let narrowed = older::error_v2(HostError::TooManyGroups.into());
        assert_eq!(narrowed, v2::wsplug::plugin::types::Error::TooLarge);
        assert_eq!(
            types::Error::from(HostError::TooManyGroups),
            types::Error::TooManyGroups
        );
    }

    #[test]
    fn text_given_as_bytes_is_checked_once() {
        assert!(matches!(text_of(b"caf\xc3\xa9".to_vec()), Ok(Outgoing::Text(t)) if t.as_str() == "café"));
        assert_eq!(text_of(b"caf\xc3".to_vec()).err(), Some(types::Error::InvalidUtf8));
    }
}
