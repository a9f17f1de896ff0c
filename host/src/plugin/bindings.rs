//! Host side of the `wsplug:plugin` world: generated bindings and the
//! implementation of the `host` interface over [`HostServices`].

use std::sync::Arc;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::{ConnId, HostError, HostServices, Outgoing};
use crate::ws::close;

wasmtime::component::bindgen!({ world: "plugin", path: "../wit" });

pub use self::wsplug::plugin::types;

/// The data of one plugin instance's store.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: StoreLimits,
    pub(super) services: Arc<dyn HostServices>,
    /// The plugin's name, for log lines.
    pub(super) name: Arc<str>,
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
        }
    }
}

impl types::Host for HostState {}

impl wsplug::plugin::host::Host for HostState {
    fn send_text(&mut self, conn: ConnId, text: String) -> Result<(), types::Error> {
        Ok(self.services.send(conn, Outgoing::Text(text.into()))?)
    }

    fn send_binary(&mut self, conn: ConnId, data: Vec<u8>) -> Result<(), types::Error> {
        Ok(self.services.send(conn, Outgoing::Binary(data.into()))?)
    }

    fn close(&mut self, conn: ConnId, code: u16, reason: String) -> Result<(), types::Error> {
        if !close::is_sendable(code) {
            return Err(types::Error::InvalidCode);
        }
        if reason.len() > close::MAX_REASON_LEN {
            return Err(types::Error::ReasonTooLong);
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
        self.services.info(conn).map(|info| types::ConnectionInfo {
            id: info.id,
            remote_address: info.remote_address.clone(),
            path: info.path.clone(),
            query: info.query.clone(),
            subprotocol: info.subprotocol.clone(),
            headers: info.headers.clone(),
        })
    }

    fn log(&mut self, level: types::LogLevel, message: String) {
        let plugin = &*self.name;
        match level {
            types::LogLevel::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
            types::LogLevel::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            types::LogLevel::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            types::LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            types::LogLevel::Error => tracing::error!(target: "plugin", plugin, "{message}"),
        }
    }
}
