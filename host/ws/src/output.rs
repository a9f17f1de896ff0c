//! The frames a connection has encoded and not yet written: one buffer of whole server
//! frames, and a count of those the socket has not started to take. The count is what
//! a slow reader's backlog is measured in; the frame being written is already on its
//! way and is not part of it.

use bytes::{Buf, BytesMut};

use super::frame::{self, FrameHeader, Opcode};

/// What waits for the peer beyond the frame being written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Whole frames none of whose bytes were written yet.
    pub frames: usize,
    /// Their bytes, headers included.
    pub bytes: usize,
}

/// Encoded frames awaiting the socket.
#[derive(Default)]
pub struct Output {
    buf: BytesMut,
    /// Bytes of the frame at the front that the socket has yet to take; 0 when the
    /// front of `buf` is the start of a frame.
    head_left: usize,
    /// Frames in `buf` that were not started.
    unstarted: usize,
}

impl Output {
    /// Appends one unfragmented, unmasked frame.
    pub fn push_frame(&mut self, opcode: Opcode, rsv1: bool, payload: &[u8]) {
        frame::encode_server_frame(&mut self.buf, opcode, rsv1, payload);
        self.unstarted += 1;
    }

    /// The bytes to write, front first.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Removes the first `n` bytes, which the socket took.
    pub fn advance(&mut self, mut n: usize) {
        assert!(n <= self.buf.len(), "advanced past the output");
        while n > 0 {
            if self.head_left == 0 {
                let (header, len) = FrameHeader::decode(&self.buf)
                    .ok()
                    .flatten()
                    .expect("the output holds whole frames that we encoded");
                self.head_left = len + header.payload_len as usize;
                self.unstarted -= 1;
            }
            let take = n.min(self.head_left);
            self.buf.advance(take);
            self.head_left -= take;
            n -= take;
        }
        if self.buf.is_empty() && self.buf.capacity() > 64 * 1024 {
            self.buf = BytesMut::new(); // give back what a burst made it grow to
        }
    }

    /// What waits beyond the frame being written.
    pub fn backlog(&self) -> Backlog {
        Backlog {
            frames: self.unstarted,
            bytes: self.buf.len() - self.head_left,
        }
    }

    /// Drops every frame not started, keeping the rest of the one being written so that
    /// what follows still starts on a frame boundary.
    pub fn discard_unstarted(&mut self) {
        self.buf.truncate(self.head_left);
        self.unstarted = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_frames_until_the_socket_starts_them() {
        let mut out = Output::default();
        out.push_frame(Opcode::Text, false, b"hello");
        out.push_frame(Opcode::Binary, false, &[0; 200]);
        out.push_frame(Opcode::Ping, false, b"");
        assert_eq!(
            out.backlog(),
            Backlog {
                frames: 3,
                bytes: 7 + 204 + 2
            }
        );
        out.advance(3); // into the first frame
        assert_eq!(out.backlog(), Backlog { frames: 2, bytes: 206 });
        out.advance(4 + 1); // the rest of it and one byte of the second
        assert_eq!(out.backlog(), Backlog { frames: 1, bytes: 2 });
        out.advance(203 + 2);
        assert_eq!(out.backlog(), Backlog::default());
        assert!(out.is_empty());
    }

    #[test]
    fn discarding_keeps_the_frame_being_written_whole() {
        let mut out = Output::default();
        out.push_frame(Opcode::Text, false, b"first");
        out.push_frame(Opcode::Text, false, b"second");
        out.advance(2);
        out.discard_unstarted();
        assert_eq!(out.bytes(), b"first");
        out.push_frame(Opcode::Close, false, &[0x03, 0xf0]);
        out.advance(5);
        assert_eq!(out.bytes(), [0x88, 2, 0x03, 0xf0]);
        assert_eq!(out.backlog(), Backlog { frames: 1, bytes: 4 });
    }
}
