//! Payload masking (RFC 6455 section 5.3): XOR with a 4-byte key, eight bytes at a time.

/// XORs `data` with `key`, where `data` starts `offset` bytes into the frame's payload.
///
/// Masking is its own inverse, so this both masks and unmasks. The offset lets a payload
/// be unmasked in pieces as it arrives.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let mut key = key;
    key.rotate_left(offset % 4);
    // Bring `data` to an 8-byte boundary byte by byte, then go word by word; the key
    // is rotated so that each word starts at the right key byte.
    let (head, words, tail) = split_words(data);
    for (i, b) in head.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    key.rotate_left(head.len() % 4);
    let [k0, k1, k2, k3] = key;
    let word = u64::from_ne_bytes([k0, k1, k2, k3, k0, k1, k2, k3]);
    for chunk in words.chunks_exact_mut(8) {
        let v = u64::from_ne_bytes(chunk.try_into().expect("8 bytes")) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in tail.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Splits `data` into an unaligned head (< 8 bytes), a run of whole 8-byte words, and a tail.
fn split_words(data: &mut [u8]) -> (&mut [u8], &mut [u8], &mut [u8]) {
    let head_len = data.as_ptr().align_offset(8).min(data.len());
    let (head, rest) = data.split_at_mut(head_len);
    let words_len = rest.len() - rest.len() % 8;
    let (words, tail) = rest.split_at_mut(words_len);
    (head, words, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(data: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    #[test]
    fn matches_bytewise_masking_for_every_alignment_offset_and_length() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let source: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..8 {
            for len in 0..70 {
                for offset in 0..5 {
                    let mut fast = source.clone();
                    let mut slow = source.clone();
                    apply_mask(&mut fast[start..start + len], key, offset);
                    naive(&mut slow[start..start + len], key, offset);
                    assert_eq!(fast, slow, "start {start} len {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn unmasking_in_pieces_equals_unmasking_at_once() {
        let key = [1, 2, 3, 4];
        let original: Vec<u8> = (0..100u8).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = original.clone();
        let (a, b) = pieces.split_at_mut(37);
        apply_mask(a, key, 0);
        apply_mask(b, key, 37);
        assert_eq!(whole, pieces);
        apply_mask(&mut whole, key, 0);
        assert_eq!(whole, original);
    }
}
