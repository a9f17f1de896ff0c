//! A plugin's stdout and stderr, turned into host log lines tagged with the plugin's
//! name, so that `println!` debugging and panic messages show up in the server log.
//! What a plugin writes, here or through its `log` import, is [`escaped`]: it cannot
//! start a log line of its own, nor colour or move a terminal's cursor.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A partial line longer than this is logged as it is, so a plugin cannot make the
/// host buffer without bound.
const MAX_LINE: usize = 4096;

/// Which of the plugin's streams this is.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// Standard output, logged at info level.
    Stdout,
    /// Standard error, logged at warn level.
    Stderr,
}

/// An output stream that logs each line it receives.
#[derive(Clone)]
pub struct LogOutput {
    plugin: Arc<str>,
    stream: Stream,
    /// The unfinished last line, shared by every handle to this stream.
    partial: Arc<Mutex<Vec<u8>>>,
}

impl LogOutput {
    /// A stream of the plugin called `plugin`.
    pub fn new(plugin: Arc<str>, stream: Stream) -> Self {
        Self {
            plugin,
            stream,
            partial: Arc::default(),
        }
    }

    fn append(&self, mut bytes: &[u8]) {
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            partial.extend_from_slice(&bytes[..end]);
            self.emit(&partial);
            partial.clear();
            bytes = &bytes[end + 1..];
        }
        partial.extend_from_slice(bytes);
        if partial.len() >= MAX_LINE {
            self.emit(&partial);
            partial.clear();
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = escaped(line.trim_end_matches('\r'));
        let plugin = &*self.plugin;
        match self.stream {
            Stream::Stdout => tracing::info!(target: "plugin", plugin, stream = "stdout", "{line}"),
            Stream::Stderr => tracing::warn!(target: "plugin", plugin, stream = "stderr", "{line}"),
        }
    }
}

/// `text` with every control character (line breaks, escape sequences, ...) written as
/// a Rust escape (`\n`, `\u{1b}`): one log line stays one line, whatever a plugin logs.
pub fn escaped(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LogOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::escaped;

    #[test]
    fn control_characters_cannot_start_a_line_or_drive_a_terminal() {
        assert_eq!(escaped("plain text, é"), "plain text, é");
        assert!(matches!(escaped("plain"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            escaped("ok\n2026-12-07T00:00:00Z ERROR forged\r\x1b[2J\t\0"),
            "ok\\n2026-12-07T00:00:00Z ERROR forged\\r\\u{1b}[2J\\t\\u{0}"
        );
    }
}
