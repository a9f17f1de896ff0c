//! RFC 6455 section 5.2 frame headers: decoding and encoding.
//!
//! This layer knows the wire format only. Which frames are allowed when
//! (fragmentation, control-frame rules, RSV bits) is decided by [`super::protocol`].

use bytes::{BufMut, BytesMut};

use super::close::ProtocolError;

/// A frame's opcode (RFC 6455 section 5.2). Reserved opcodes are rejected while decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// Continues a fragmented data message.
    Continuation = 0x0,
    /// First (or only) frame of a text message.
    Text = 0x1,
    /// First (or only) frame of a binary message.
    Binary = 0x2,
    /// Starts or answers the closing handshake.
    Close = 0x8,
    /// Asks the peer for a pong.
    Ping = 0x9,
    /// Answers a ping, or a unidirectional heartbeat.
    Pong = 0xA,
}

impl Opcode {
    /// Maps the low four bits of a frame's first byte; `None` for reserved opcodes.
    pub fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// Control frames (close, ping, pong) may interleave with fragments and are limited to 125 bytes.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// The longest payload a control frame may carry (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest frame header: 2 bytes, 8 bytes of extended length and a 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1: set on the first frame of a compressed message when permessage-deflate is on.
    pub rsv1: bool,
    /// RSV2 or RSV3: no extension we negotiate uses them.
    pub rsv23: bool,
    /// What the frame carries.
    pub opcode: Opcode,
    /// Masking key; clients must mask every frame, servers never do.
    pub mask: Option<[u8; 4]>,
    /// Length of the payload that follows the header.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Decodes a header from the start of `buf`.
    ///
    /// Returns the header and its length in bytes, `Ok(None)` if `buf` does not hold a
    /// whole header yet, or a 1002 error for a reserved opcode or a 64-bit length with
    /// its most significant bit set.
    pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(ProtocolError::protocol("reserved opcode"))?;
        let masked = b1 & 0x80 != 0;
        let (payload_len, len_bytes) = match b1 & 0x7F {
            126 => (2, 2),
            127 => (0, 8),
            n => (u64::from(n), 0),
        };
        let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
        if buf.len() < header_len {
            return Ok(None);
        }
        let payload_len = match len_bytes {
            2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
            8 => {
                let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(ProtocolError::protocol("payload length has its top bit set"));
                }
                len
            }
            _ => payload_len,
        };
        let mask = masked.then(|| {
            let at = 2 + len_bytes;
            [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
        });
        Ok(Some((
            FrameHeader {
                fin: b0 & 0x80 != 0,
                rsv1: b0 & 0x40 != 0,
                rsv23: b0 & 0x30 != 0,
                opcode,
                mask,
                payload_len,
            },
            header_len,
        )))
    }

    /// Appends this header to `out`, using the shortest length encoding.
    pub fn encode(&self, out: &mut BytesMut) {
        let b0 = (u8::from(self.fin) << 7)
            | (u8::from(self.rsv1) << 6)
            | (if self.rsv23 { 0x30 } else { 0 })
            | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        out.reserve(MAX_HEADER_LEN);
        out.put_u8(b0);
        match self.payload_len {
            n @ 0..=125 => out.put_u8(mask_bit | n as u8),
            n @ 126..=0xFFFF => {
                out.put_u8(mask_bit | 126);
                out.put_u16(n as u16);
            }
            n => {
                out.put_u8(mask_bit | 127);
                out.put_u64(n);
            }
        }
        if let Some(mask) = self.mask {
            out.put_slice(&mask);
        }
    }
}

/// Appends a whole unmasked server frame (header and payload) to `out`.
pub fn encode_server_frame(out: &mut BytesMut, opcode: Opcode, rsv1: bool, payload: &[u8]) {
    FrameHeader {
        fin: true,
        rsv1,
        rsv23: false,
        opcode,
        mask: None,
        payload_len: payload.len() as u64,
    }
    .encode(out);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: Opcode, len: u64, mask: Option<[u8; 4]>) -> FrameHeader {
        FrameHeader {
            fin: true,
            rsv1: false,
            rsv23: false,
            opcode,
            mask,
            payload_len: len,
        }
    }

    #[test]
    fn round_trips_every_length_encoding() {
        for len in [0, 1, 125, 126, 127, 0xFFFF, 0x10000, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = header(Opcode::Binary, len, mask);
                let mut out = BytesMut::new();
                h.encode(&mut out);
                let expected_len =
                    2 + match len {
                        0..=125 => 0,
                        126..=0xFFFF => 2,
                        _ => 8,
                    } + if mask.is_some() { 4 } else { 0 };
                assert_eq!(out.len(), expected_len, "len {len}");
                assert_eq!(FrameHeader::decode(&out).unwrap(), Some((h, expected_len)));
                // Every strict prefix is incomplete, never an error.
                for cut in 0..out.len() {
                    assert_eq!(FrameHeader::decode(&out[..cut]).unwrap(), None);
                }
            }
        }
    }

    #[test]
    fn decodes_flag_bits() {
        let (h, n) = FrameHeader::decode(&[0x41, 0x00]).unwrap().unwrap();
        assert_eq!(n, 2);
        assert!(!h.fin && h.rsv1 && !h.rsv23);
        assert_eq!(h.opcode, Opcode::Text);
        let (h, _) = FrameHeader::decode(&[0xA2, 0x00]).unwrap().unwrap();
        assert!(h.fin && h.rsv23 && !h.rsv1);
        let (h, _) = FrameHeader::decode(&[0x91, 0x00]).unwrap().unwrap();
        assert!(h.rsv23);
    }

    #[test]
    fn rejects_reserved_opcodes() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let err = FrameHeader::decode(&[0x80 | op, 0x80]).unwrap_err();
            assert_eq!(err.code, 1002);
        }
    }

    #[test]
    fn rejects_64_bit_length_with_top_bit() {
        let mut buf = vec![0x82, 0xFF];
        buf.extend_from_slice(&(1u64 << 63).to_be_bytes());
        buf.extend_from_slice(&[0; 4]);
        assert_eq!(FrameHeader::decode(&buf).unwrap_err().code, 1002);
    }

    #[test]
    fn control_opcodes_are_control() {
        assert!(Opcode::Close.is_control() && Opcode::Ping.is_control() && Opcode::Pong.is_control());
        assert!(!Opcode::Text.is_control() && !Opcode::Binary.is_control());
        assert!(!Opcode::Continuation.is_control());
    }
}
