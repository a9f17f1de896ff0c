//! Incremental UTF-8 validation, so that a text message arriving in pieces is
//! rejected at the first byte that cannot be part of valid UTF-8, not at its end.

/// Validates a byte stream fed in arbitrary pieces.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// The start of a character split across pieces (at most 3 bytes).
    pending: [u8; 4],
    pending_len: usize,
}

/// The bytes fed so far cannot be the start of valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// Checks the next piece of the stream.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            let width = char_width(self.pending[0]);
            let take = (width - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            match std::str::from_utf8(&self.pending[..self.pending_len]) {
                Ok(_) => self.pending_len = 0,
                // Still a valid prefix of one character: `data` is used up.
                Err(e) if e.error_len().is_none() => return Ok(()),
                Err(_) => return Err(InvalidUtf8),
            }
        }
        // The bulk of every text message goes through here: validate with SIMD.
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let rest = &data[e.valid_up_to()..];
                self.pending[..rest.len()].copy_from_slice(rest);
                self.pending_len = rest.len();
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Checks that the stream did not end inside a character.
    pub fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

/// Length of the character a (valid) lead byte starts.
fn char_width(lead: u8) -> usize {
    match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_in_pieces(data: &[u8], piece: usize) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::default();
        for chunk in data.chunks(piece.max(1)) {
            v.feed(chunk)?;
        }
        v.finish()
    }

    #[test]
    fn agrees_with_std_for_every_split() {
        let samples: &[&[u8]] = &[
            "Hello-µ@ßöäüàá-UTF-8!!".as_bytes(),
            "κόσμε".as_bytes(),
            "\u{10FFFF}\u{FFFF}\u{7FF}".as_bytes(),
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xed\x9f\xbf",
            b"\xf0\x9f\x98",
            b"\x80",
        ];
        for sample in samples {
            let expected = std::str::from_utf8(sample).is_ok();
            for piece in 1..=sample.len() {
                assert_eq!(
                    feed_in_pieces(sample, piece).is_ok(),
                    expected,
                    "{sample:x?} in pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn fails_fast_on_an_impossible_prefix() {
        let mut v = Utf8Validator::default();
        v.feed(b"ab\xce").unwrap();
        v.feed(b"\xba").unwrap();
        // 0xED 0xA0 starts a UTF-16 surrogate: invalid before the character is complete.
        assert_eq!(v.feed(b"\xed\xa0"), Err(InvalidUtf8));
        let mut v = Utf8Validator::default();
        v.feed(b"\xed").unwrap();
        assert_eq!(v.feed(b"\xa0"), Err(InvalidUtf8));
        // A lone lead byte at the end is only an error when the stream ends.
        let mut v = Utf8Validator::default();
        v.feed(b"\xe2\x82").unwrap();
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }
}
