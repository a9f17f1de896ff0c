//! RFC 7692 permessage-deflate: negotiation of the extension's parameters and the
//! per-connection compressor and decompressor.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What the server is willing to do, from its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Largest LZ77 window (as a power of two, 9..=15) the server compresses with.
    pub server_max_window_bits: u8,
    /// Largest window the server asks clients to compress with, when they allow it.
    pub client_max_window_bits: u8,
    /// zlib compression level, 0..=9.
    pub level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            level: 6,
        }
    }
}

/// The parameters both sides agreed on for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message, so ours may reset too.
    pub client_no_context_takeover: bool,
    /// Window the server compresses with.
    pub server_window_bits: u8,
}

/// The trailer that a sync flush ends with; stripped from sent messages and added back
/// to received ones (RFC 7692 section 7.2.1).
const SYNC_TRAILER: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Picks the first acceptable permessage-deflate offer from the values of the request's
/// `Sec-WebSocket-Extensions` headers.
///
/// Returns the agreed parameters and the response header's value, or `None` when no
/// offer is acceptable (offers with unknown, repeated or invalid parameters are declined,
/// as RFC 7692 section 5 requires) and the connection goes on without compression.
pub fn negotiate<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
    config: &DeflateConfig,
) -> Option<(DeflateParams, String)> {
    header_values
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(|offer| accept_offer(offer, config))
}

/// One parsed offer, before the server's configuration is applied.
#[derive(Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: the client allows the parameter without suggesting a value.
    client_max_window_bits: Option<Option<u8>>,
}

fn accept_offer(offer: &str, config: &DeflateConfig) -> Option<(DeflateParams, String)> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut parsed = Offer::default();
    let mut seen = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => parsed.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => parsed.client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => parsed.server_max_window_bits = Some(window_bits(v)?),
            ("client_max_window_bits", None) => parsed.client_max_window_bits = Some(None),
            ("client_max_window_bits", Some(v)) => parsed.client_max_window_bits = Some(Some(window_bits(v)?)),
            _ => return None,
        }
        seen.push(name);
    }

    let mut response = String::from("permessage-deflate");
    if parsed.server_no_context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if parsed.client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    let server_window_bits = match parsed.server_max_window_bits {
        Some(offered) => {
            let bits = offered.min(config.server_max_window_bits);
            response.push_str(&format!("; server_max_window_bits={bits}"));
            bits
        }
        // Without the parameter we may not mention it, but may still use a smaller window.
        None => config.server_max_window_bits,
    };
    if let Some(offered) = parsed.client_max_window_bits {
        let bits = offered.unwrap_or(15).min(config.client_max_window_bits);
        if bits < 15 {
            response.push_str(&format!("; client_max_window_bits={bits}"));
        }
    }
    let params = DeflateParams {
        server_no_context_takeover: parsed.server_no_context_takeover,
        client_no_context_takeover: parsed.client_no_context_takeover,
        server_window_bits,
    };
    Some((params, response))
}

fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(value),
    }
}

/// A window size parameter: a decimal 8..=15 with no leading zero or sign.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || value.len() > 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// Why a received compressed message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// The inflated message would exceed the size limit.
    TooBig,
    /// The data is not a valid deflate stream.
    Corrupt,
}

/// Inflates received messages, keeping the LZ77 window between messages unless the
/// client resets its own.
pub struct Inflater {
    inner: Decompress,
    reset_after_message: bool,
    /// The current message has brought compressed bytes.
    fed: bool,
}

impl Inflater {
    /// A decompressor for a connection with `params`. It always uses a 15-bit window:
    /// that decodes whatever smaller window the client compresses with.
    pub fn new(params: &DeflateParams) -> Self {
        Self {
            inner: Decompress::new_with_window_bits(false, 15),
            reset_after_message: params.client_no_context_takeover,
            fed: false,
        }
    }

    /// Inflates the next piece of a message's compressed payload, appending to `out`,
    /// which must not grow past `limit` bytes.
    pub fn inflate(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        self.fed |= !input.is_empty();
        self.run(input, out, limit, FlushDecompress::None)
    }

    /// Ends a message: inflates the implied sync trailer and resets if agreed.
    ///
    /// A message with no compressed bytes at all is empty, and its trailer is not
    /// inflated: RFC 7692 has the sender send 0x00 for it, but a sender that sends
    /// nothing leaves its stream where it was, and inflating the bare trailer there
    /// would open a stored block that the next message's bytes are taken into.
    pub fn finish_message(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        let result = if std::mem::take(&mut self.fed) {
            self.run(&SYNC_TRAILER, out, limit, FlushDecompress::Sync)
        } else {
            Ok(())
        };
        if self.reset_after_message {
            self.inner.reset(false);
        }
        result
    }

    fn run(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
        flush: FlushDecompress,
    ) -> Result<(), InflateError> {
        loop {
            // Offer room for the output in bounded steps, one byte past the limit so
            // that reaching it is detected, so a bomb never allocates more than that.
            if out.capacity() == out.len() {
                let step = (64 * 1024).max(input.len() * 2);
                out.reserve_exact((limit + 1).saturating_sub(out.len()).clamp(1, step));
            }
            let (before_in, before_out) = (self.inner.total_in(), out.len());
            let status = self
                .inner
                .decompress_vec(input, out, flush)
                .map_err(|_| InflateError::Corrupt)?;
            let consumed = (self.inner.total_in() - before_in) as usize;
            if consumed == 0 && out.len() == before_out && !input.is_empty() {
                return Err(InflateError::Corrupt);
            }
            input = &input[consumed..];
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                // The client ended the deflate stream (BFINAL, RFC 7692 section 7.2.3.5):
                // what follows starts a new one, in this piece of input as in the next,
                // so that how the frames were split never changes what they decode to.
                self.inner.reset(false);
                if input.is_empty() {
                    // Nothing of a new stream yet: unless more comes, the trailer has no
                    // block to end (a sender that ends with BFINAL and no 0x00 after it).
                    self.fed = false;
                    return Ok(());
                }
                continue;
            }
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

/// Compresses sent messages.
pub struct Deflater {
    inner: Compress,
    reset_after_message: bool,
}

impl Deflater {
    /// A compressor for a connection with `params`.
    pub fn new(params: &DeflateParams, level: u32) -> Self {
        // zlib does not support an 8-bit window for raw deflate. A 9-bit window is a
        // safe substitute: zlib never emits distances beyond window - 262 = 250 bytes,
        // which a peer decoding with a 256-byte window can resolve.
        let bits = params.server_window_bits.max(9);
        Self {
            inner: Compress::new_with_window_bits(Compression::new(level), false, bits),
            reset_after_message: params.server_no_context_takeover,
        }
    }

    /// Compresses one whole message into `out` (cleared first), without the sync trailer.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(input.len() / 2 + 64);
        let mut input = input;
        loop {
            let before_in = self.inner.total_in();
            self.inner
                .compress_vec(input, out, FlushCompress::Sync)
                .expect("deflate on an in-memory buffer cannot fail");
            input = &input[(self.inner.total_in() - before_in) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&SYNC_TRAILER) {
            out.truncate(out.len() - SYNC_TRAILER.len());
        }
        if out.is_empty() {
            // Nothing was pending (an empty message after a sync flush): send an empty
            // stored block's first byte, which with the peer's implied trailer is a
            // complete empty block (RFC 7692 section 7.2.3.6). An empty payload with
            // RSV1 would leave some decoders' streams in a state the next message breaks.
            out.push(0x00);
        }
        if self.reset_after_message {
            self.inner.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiate_one(offer: &str) -> Option<(DeflateParams, String)> {
        negotiate([offer], &DeflateConfig::default())
    }

    #[test]
    fn accepts_a_plain_offer() {
        let (params, response) = negotiate_one("permessage-deflate").unwrap();
        assert_eq!(response, "permessage-deflate");
        assert_eq!(
            params,
            DeflateParams {
                server_no_context_takeover: false,
                client_no_context_takeover: false,
                server_window_bits: 15
            }
        );
    }

    #[test]
    fn honours_every_parameter() {
        let (params, response) = negotiate_one(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits",
        )
        .unwrap();
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9"
        );
        assert!(params.server_no_context_takeover && params.client_no_context_takeover);
        assert_eq!(params.server_window_bits, 9);
        let (_, response) = negotiate_one("permessage-deflate; server_max_window_bits=\"10\"").unwrap();
        assert_eq!(response, "permessage-deflate; server_max_window_bits=10");
    }

    #[test]
    fn limits_the_client_window_only_when_allowed() {
        let config = DeflateConfig {
            client_max_window_bits: 10,
            ..DeflateConfig::default()
        };
        let (_, response) = negotiate(["permessage-deflate; client_max_window_bits"], &config).unwrap();
        assert_eq!(response, "permessage-deflate; client_max_window_bits=10");
        let (_, response) = negotiate(["permessage-deflate; client_max_window_bits=9"], &config).unwrap();
        assert_eq!(response, "permessage-deflate; client_max_window_bits=9");
        let (_, response) = negotiate(["permessage-deflate"], &config).unwrap();
        assert_eq!(response, "permessage-deflate");
    }

    #[test]
    fn declines_bad_offers_and_falls_back_to_the_next() {
        for bad in [
            "permessage-deflate; unknown",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(negotiate_one(bad), None, "{bad}");
        }
        let (params, _) = negotiate(
            ["permessage-deflate; bogus, permessage-deflate; server_no_context_takeover"],
            &DeflateConfig::default(),
        )
        .unwrap();
        assert!(params.server_no_context_takeover);
        let (_, response) = negotiate(["foo", "permessage-deflate"], &DeflateConfig::default()).unwrap();
        assert_eq!(response, "permessage-deflate");
    }

    fn params(server_nct: bool, client_nct: bool, bits: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: server_nct,
            client_no_context_takeover: client_nct,
            server_window_bits: bits,
        }
    }

    #[test]
    fn round_trips_messages_with_and_without_context_takeover() {
        for (nct, bits) in [(false, 15), (true, 15), (false, 8), (true, 9)] {
            let p = params(nct, nct, bits);
            let mut deflater = Deflater::new(&p, 6);
            let mut inflater = Inflater::new(&p);
            let mut compressed = Vec::new();
            for i in 0..5 {
                let message = format!("message {i}: {}", "hello wsplug ".repeat(50 * i));
                deflater.compress(message.as_bytes(), &mut compressed);
                let mut out = Vec::new();
                // Feed the compressed bytes in small pieces, as frames would arrive.
                for piece in compressed.chunks(7) {
                    inflater.inflate(piece, &mut out, 1 << 20).unwrap();
                }
                inflater.finish_message(&mut out, 1 << 20).unwrap();
                assert_eq!(out, message.as_bytes());
            }
        }
    }

    /// Decodes one message the way any RFC 7692 peer does: a raw inflate stream kept
    /// across messages (or fresh per message), fed the payload plus the sync trailer.
    fn plain_inflate(decoder: &mut Decompress, payload: &[u8]) -> Vec<u8> {
        let mut input = payload.to_vec();
        input.extend_from_slice(&SYNC_TRAILER);
        let mut out = Vec::with_capacity(input.len() * 8 + 64);
        let mut rest = &input[..];
        loop {
            let before = decoder.total_in();
            decoder
                .decompress_vec(rest, &mut out, FlushDecompress::Sync)
                .expect("a plain decoder accepts what we send");
            rest = &rest[(decoder.total_in() - before) as usize..];
            if rest.is_empty() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity());
        }
    }

    #[test]
    fn an_empty_message_between_others_decodes_with_a_plain_inflater() {
        // RFC 7692 section 7.2.3.6: an empty message must still be a valid deflate
        // block, or the peer's decoder fails on it or on the message after it.
        for nct in [false, true] {
            let p = params(nct, nct, 15);
            let mut deflater = Deflater::new(&p, 6);
            let mut decoder = Decompress::new(false);
            let mut compressed = Vec::new();
            for message in ["", "hello", "", "", "world", "", "hello"] {
                deflater.compress(message.as_bytes(), &mut compressed);
                assert!(!compressed.is_empty(), "{message:?} was sent as an empty payload");
                if nct {
                    decoder.reset(false);
                }
                assert_eq!(
                    plain_inflate(&mut decoder, &compressed),
                    message.as_bytes(),
                    "context takeover off: {nct}"
                );
            }
        }
    }

    #[test]
    fn matches_the_rfc_example() {
        // RFC 7692 section 7.2.3.1: "Hello" compressed.
        let p = params(false, false, 15);
        let mut inflater = Inflater::new(&p);
        let mut out = Vec::new();
        inflater
            .inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], &mut out, 100)
            .unwrap();
        inflater.finish_message(&mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
        // Same message again, using the shared window (section 7.2.3.2).
        let mut out = Vec::new();
        inflater
            .inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], &mut out, 100)
            .unwrap();
        inflater.finish_message(&mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn a_final_block_decodes_the_same_however_the_frames_are_split() {
        // A client may end each stream with BFINAL (RFC 7692 section 7.2.3.5); what comes
        // after it in the same message starts a new stream (found by the fuzzer: fed
        // whole, the second stream was dropped, fed in pieces it was not).
        let mut finished = Vec::with_capacity(64);
        Compress::new(Compression::default(), false)
            .compress_vec(b"Hello", &mut finished, FlushCompress::Finish)
            .unwrap();
        let payload = [finished.clone(), finished].concat();
        for piece in [payload.len(), 1, 3] {
            let mut inflater = Inflater::new(&params(false, false, 15));
            let mut out = Vec::new();
            for chunk in payload.chunks(piece) {
                inflater.inflate(chunk, &mut out, 100).unwrap();
            }
            inflater.finish_message(&mut out, 100).unwrap();
            assert_eq!(out, b"HelloHello", "pieces of {piece}");
        }
    }

    #[test]
    fn stops_a_compression_bomb_at_the_limit() {
        let p = params(false, false, 15);
        let mut deflater = Deflater::new(&p, 9);
        let mut bomb = Vec::new();
        deflater.compress(&vec![0u8; 50 << 20], &mut bomb);
        assert!(bomb.len() < 100 << 10, "bomb is {} bytes", bomb.len());
        let mut inflater = Inflater::new(&p);
        let mut out = Vec::new();
        let limit = 1 << 20;
        assert_eq!(inflater.inflate(&bomb, &mut out, limit), Err(InflateError::TooBig));
        assert!(out.capacity() <= 2 * limit, "allocated {}", out.capacity());
    }

    #[test]
    fn reports_corrupt_data() {
        let mut inflater = Inflater::new(&params(false, false, 15));
        let mut out = Vec::new();
        let result = inflater
            .inflate(&[0xff, 0xff, 0xff, 0xff, 0xff], &mut out, 100)
            .and_then(|_| inflater.finish_message(&mut out, 100));
        assert_eq!(result, Err(InflateError::Corrupt));
    }
}
