//! A minimal, fast WebSocket client: one handshake, masked frames out, unmasked frames
//! in, optional permessage-deflate (with context takeover both ways) and TLS.

use std::sync::Arc;

use anyhow::{Context as _, bail, ensure};
use bytes::{Buf, BufMut, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Anything a client can run over: TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    /// Request path, e.g. `/`.
    pub path: String,
    /// Offer permessage-deflate (and compress what we send if it is accepted).
    pub deflate: bool,
    /// Connect over TLS, accepting any certificate.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

/// A frame as received.
pub struct Frame {
    /// The opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// The payload, inflated if it was compressed.
    pub payload: BytesMut,
}

/// One open WebSocket connection.
pub struct Client {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    deflate: Option<Deflate>,
}

struct Deflate {
    compress: Compress,
    decompress: Decompress,
    scratch: Vec<u8>,
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

impl Client {
    /// Connects and completes the opening handshake.
    pub async fn connect(target: &Target) -> anyhow::Result<Client> {
        let tcp = TcpStream::connect(&target.addr)
            .await
            .with_context(|| format!("connect {}", target.addr))?;
        tcp.set_nodelay(true)?;
        let mut stream: Box<dyn Stream> = match &target.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
                Box::new(connector.connect(name, tcp).await?)
            }
        };
        let extensions = if target.deflate {
            "Sec-WebSocket-Extensions: permessage-deflate\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extensions}\r\n",
            target.path, target.addr
        );
        stream.write_all(request.as_bytes()).await?;
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let head_len = loop {
            if let Some(at) = rbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            ensure!(rbuf.len() < 16 * 1024, "handshake response too long");
            if stream.read_buf(&mut rbuf).await? == 0 {
                bail!("connection closed during the handshake");
            }
        };
        let head = String::from_utf8_lossy(&rbuf[..head_len]).to_ascii_lowercase();
        ensure!(
            head.starts_with("http/1.1 101"),
            "handshake refused: {}",
            head.lines().next().unwrap_or("")
        );
        let accepted_deflate = head.contains("sec-websocket-extensions: permessage-deflate");
        ensure!(
            !target.deflate || accepted_deflate,
            "the server did not accept permessage-deflate"
        );
        rbuf.advance(head_len);
        let deflate = accepted_deflate.then(|| Deflate {
            compress: Compress::new(Compression::fast(), false),
            decompress: Decompress::new(false),
            scratch: Vec::new(),
        });
        Ok(Client {
            stream,
            rbuf,
            wbuf: BytesMut::with_capacity(64 * 1024),
            deflate,
        })
    }

    /// Queues a data frame (opcode 1 or 2), masked with a zero key: the masking bit
    /// is set as RFC 6455 requires, and the server unmasks as usual, but the client
    /// spends nothing on it.
    pub fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let (rsv1, payload) = match &mut self.deflate {
            Some(d) => {
                d.scratch.clear();
                d.scratch.reserve(payload.len() + 64);
                let mut input = payload;
                loop {
                    let before = d.compress.total_in();
                    d.compress
                        .compress_vec(input, &mut d.scratch, FlushCompress::Sync)
                        .expect("deflate");
                    input = &input[(d.compress.total_in() - before) as usize..];
                    if input.is_empty() && d.scratch.len() < d.scratch.capacity() {
                        break;
                    }
                    d.scratch.reserve(d.scratch.capacity());
                }
                d.scratch.truncate(d.scratch.len().saturating_sub(4));
                (0x40, d.scratch.as_slice())
            }
            None => (0, payload),
        };
        self.wbuf.put_u8(0x80 | rsv1 | opcode);
        match payload.len() {
            n @ 0..=125 => self.wbuf.put_u8(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                self.wbuf.put_u8(0x80 | 126);
                self.wbuf.put_u16(n as u16);
            }
            n => {
                self.wbuf.put_u8(0x80 | 127);
                self.wbuf.put_u64(n as u64);
            }
        }
        self.wbuf.put_u32(0);
        self.wbuf.extend_from_slice(payload);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        // Consumes what it writes as it goes: cancelled, it never sends a byte twice.
        self.stream.write_all_buf(&mut self.wbuf).await?;
        Ok(())
    }

    /// The next complete frame from what was read, without reading more.
    pub fn parse(&mut self) -> anyhow::Result<Option<Frame>> {
        let buf = &self.rbuf;
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        ensure!(b1 & 0x80 == 0, "server frames must not be masked");
        ensure!(b0 & 0x80 != 0, "wsbench does not expect fragmented messages");
        let (len, header) = match b1 & 0x7F {
            126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
            127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into()?) as usize, 10),
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if buf.len() < header + len {
            return Ok(None);
        }
        self.rbuf.advance(header);
        let mut payload = self.rbuf.split_to(len);
        if b0 & 0x40 != 0 {
            let d = self
                .deflate
                .as_mut()
                .context("compressed frame without permessage-deflate")?;
            payload.extend_from_slice(&[0, 0, 0xFF, 0xFF]);
            let mut out = Vec::with_capacity(payload.len() * 4 + 64);
            let mut input = &payload[..];
            loop {
                let before = d.decompress.total_in();
                d.decompress.decompress_vec(input, &mut out, FlushDecompress::Sync)?;
                input = &input[(d.decompress.total_in() - before) as usize..];
                if input.is_empty() && out.len() < out.capacity() {
                    break;
                }
                out.reserve(out.capacity());
            }
            payload = BytesMut::from(&out[..]);
        }
        Ok(Some(Frame {
            opcode: b0 & 0x0F,
            payload,
        }))
    }

    /// Reads more bytes; fails at the end of the stream.
    pub async fn fill(&mut self) -> anyhow::Result<()> {
        self.rbuf.reserve(64 * 1024);
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
            bail!("connection closed by the server");
        }
        Ok(())
    }

    /// The next data frame among what was already read, queueing a pong for each
    /// ping on the way; `None` if more must be read.
    pub fn parse_data(&mut self) -> anyhow::Result<Option<Frame>> {
        while let Some(frame) = self.parse()? {
            match frame.opcode {
                9 => {
                    let payload = frame.payload.to_vec();
                    self.queue_control(10, &payload);
                }
                10 => {}
                8 => bail!("the server closed the connection"),
                _ => return Ok(Some(frame)),
            }
        }
        Ok(None)
    }

    /// The next data frame: flushes what is queued (messages, pongs) before waiting.
    pub async fn next_data(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(frame) = self.parse_data()? {
                return Ok(frame);
            }
            self.flush().await?;
            self.fill().await?;
        }
    }

    fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
        self.wbuf.put_u8(0x80 | opcode);
        self.wbuf.put_u8(0x80 | payload.len() as u8);
        self.wbuf.put_u32(0);
        self.wbuf.extend_from_slice(payload);
    }

    /// Sends a close frame (1000) and flushes.
    pub async fn close(&mut self) -> anyhow::Result<()> {
        self.queue_control(8, &1000u16.to_be_bytes());
        self.flush().await
    }
}

/// A TLS connector that accepts any certificate: the benchmark measures throughput,
/// not trust.
pub fn insecure_tls() -> tokio_rustls::TlsConnector {
    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}
