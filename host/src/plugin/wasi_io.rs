//! WASI's `wasi:io` (streams and polling) for synchronous plugin calls on any thread.
//!
//! wasmtime-wasi's synchronous bindings run each call that may wait (a blocking write,
//! a flush, dropping a stream, `poll`) by blocking on the async runtime, which panics on
//! a runtime thread: where a stateless plugin runs. Linked over them, these run the same
//! calls through [`crate::blocking::wait_for`]: a write to stdout or stderr (a log line,
//! ready at once) costs nothing more, and a call that does wait (a sleep) hands the
//! thread's other connections to another thread first, or traps past the bound on such
//! waits.

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::bindings::sync::io::poll::{self, Pollable};
use wasmtime_wasi::p2::bindings::sync::io::streams::{self, InputStream, OutputStream};
use wasmtime_wasi::p2::{StreamError, StreamResult};
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;
use wasmtime_wasi_io::bindings::wasi::io::streams::{HostInputStream as AsyncInput, HostOutputStream as AsyncOutput};

use crate::blocking::{self, TooManyWaiting};

/// [`blocking::wait_for`], a refusal trapping the plugin's call.
fn wait_for<F: Future>(future: F) -> wasmtime::Result<F::Output> {
    blocking::wait_for(future).map_err(refused)
}

/// [`wait_for`] of a stream operation.
fn wait_for_stream<T>(future: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    blocking::wait_for(future).map_err(|busy| StreamError::Trap(refused(busy)))?
}

fn refused(busy: TooManyWaiting) -> wasmtime::Error {
    wasmtime::Error::msg(format!(
        "a WASI call of a stateless plugin could not wait on a connection's thread ({busy}): \
         a stateless plugin should not sleep"
    ))
}

/// Replaces the `wasi:io/poll` and `wasi:io/streams` functions that `linker` has from
/// `wasmtime_wasi::p2::add_to_linker_sync` (it must have them already).
pub fn add_to_linker<T: WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    poll::add_to_linker::<T, AnyThread>(linker, |state| Io(state.ctx().table))?;
    streams::add_to_linker::<T, AnyThread>(linker, |state| Io(state.ctx().table))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The plugin's resource table, serving `wasi:io` on any thread.
pub struct Io<'a>(&'a mut ResourceTable);

struct AnyThread;

impl HasData for AnyThread {
    type Data<'a> = Io<'a>;
}

impl poll::Host for Io<'_> {
    fn poll(&mut self, pollables: Vec<Resource<Pollable>>) -> wasmtime::Result<Vec<u32>> {
        wait_for(async_poll::Host::poll(self.0, pollables))?
    }
}

impl poll::HostPollable for Io<'_> {
    fn ready(&mut self, pollable: Resource<Pollable>) -> wasmtime::Result<bool> {
        wait_for(async_poll::HostPollable::ready(self.0, pollable))?
    }
    fn block(&mut self, pollable: Resource<Pollable>) -> wasmtime::Result<()> {
        wait_for(async_poll::HostPollable::block(self.0, pollable))?
    }
    fn drop(&mut self, pollable: Resource<Pollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(self.0, pollable)
    }
}

impl streams::Host for Io<'_> {
    fn convert_stream_error(&mut self, error: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, error)
    }
}

impl streams::HostOutputStream for Io<'_> {
    fn drop(&mut self, stream: Resource<OutputStream>) -> wasmtime::Result<()> {
        wait_for(AsyncOutput::drop(self.0, stream))?
    }
    fn check_write(&mut self, stream: Resource<OutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.0, stream)
    }
    fn write(&mut self, stream: Resource<OutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.0, stream, bytes)
    }
    fn blocking_write_and_flush(&mut self, stream: Resource<OutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        wait_for_stream(AsyncOutput::blocking_write_and_flush(self.0, stream, bytes))
    }
    fn blocking_write_zeroes_and_flush(&mut self, stream: Resource<OutputStream>, len: u64) -> StreamResult<()> {
        wait_for_stream(AsyncOutput::blocking_write_zeroes_and_flush(self.0, stream, len))
    }
    fn subscribe(&mut self, stream: Resource<OutputStream>) -> wasmtime::Result<Resource<Pollable>> {
        streams::HostOutputStream::subscribe(self.0, stream)
    }
    fn write_zeroes(&mut self, stream: Resource<OutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }
    fn flush(&mut self, stream: Resource<OutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.0, stream)
    }
    fn blocking_flush(&mut self, stream: Resource<OutputStream>) -> StreamResult<()> {
        // A borrow, as wasmtime-wasi's own does: the guest keeps its stream.
        wait_for_stream(AsyncOutput::blocking_flush(self.0, Resource::new_borrow(stream.rep())))
    }
    fn splice(&mut self, dst: Resource<OutputStream>, src: Resource<InputStream>, len: u64) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.0, dst, src, len)
    }
    fn blocking_splice(
        &mut self,
        dst: Resource<OutputStream>,
        src: Resource<InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        wait_for_stream(AsyncOutput::blocking_splice(self.0, dst, src, len))
    }
}

impl streams::HostInputStream for Io<'_> {
    fn drop(&mut self, stream: Resource<InputStream>) -> wasmtime::Result<()> {
        wait_for(AsyncInput::drop(self.0, stream))?
    }
    fn read(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.0, stream, len)
    }
    fn blocking_read(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        wait_for_stream(AsyncInput::blocking_read(self.0, stream, len))
    }
    fn skip(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.0, stream, len)
    }
    fn blocking_skip(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<u64> {
        wait_for_stream(AsyncInput::blocking_skip(self.0, stream, len))
    }
    fn subscribe(&mut self, stream: Resource<InputStream>) -> wasmtime::Result<Resource<Pollable>> {
        streams::HostInputStream::subscribe(self.0, stream)
    }
}
