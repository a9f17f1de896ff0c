//! The frame reader: `FrameHeader::decode` on arbitrary bytes, checked against the
//! RFC 6455 section 5.2 layout read independently here, and `apply_mask` against
//! bytewise XOR.

use bytes::BytesMut;
use wsplug_ws::frame::{FrameHeader, MAX_HEADER_LEN};
use wsplug_ws::mask::apply_mask;

pub fn run(data: &[u8]) {
    check_decode(data);
    check_mask(data);
}

/// What RFC 6455 says the header at the start of `data` is, read byte by byte.
struct Layout {
    header_len: usize,
    /// The length as the wire says it (`None` while the extended length is incomplete).
    payload_len: Option<u64>,
    /// The length used the shortest encoding (as every encoder should send it).
    minimal: bool,
}

fn layout(data: &[u8]) -> Option<Layout> {
    let b1 = *data.get(1)?;
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header_len = 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
    let ext_bytes = data.get(2..2 + ext);
    let payload_len = ext_bytes.map(|bytes| {
        bytes.iter().fold(u64::from(b1 & 0x7F) * u64::from(ext == 0), |n, &b| {
            n << 8 | u64::from(b)
        })
    });
    let minimal = match (ext, payload_len) {
        (0, _) => true,
        (2, Some(n)) => n >= 126,
        (8, Some(n)) => n > 0xFFFF,
        _ => false,
    };
    Some(Layout {
        header_len,
        payload_len,
        minimal,
    })
}

fn check_decode(data: &[u8]) {
    let result = FrameHeader::decode(data);
    let reserved_opcode = data.first().is_some_and(|b0| matches!(b0 & 0x0F, 3..=7 | 0xB..=0xF));
    match (result, layout(data)) {
        (Ok(None), None) => {}
        (Ok(None), Some(layout)) => {
            assert!(!reserved_opcode, "reserved opcode not rejected");
            assert!(
                data.len() < layout.header_len,
                "decode wants more than a {}-byte header: {data:02x?}",
                layout.header_len
            );
        }
        (Err(e), Some(layout)) => {
            assert_eq!(e.code, 1002);
            let top_bit = data.len() >= layout.header_len && layout.payload_len.is_some_and(|n| n >> 63 != 0);
            assert!(reserved_opcode || top_bit, "rejected a valid header: {data:02x?}: {e}");
        }
        (Err(e), None) => panic!("error {e} on {} bytes, before the header could be read", data.len()),
        (Ok(Some((header, len))), layout) => {
            let layout = layout.expect("a header needs two bytes");
            assert!(!reserved_opcode, "reserved opcode accepted");
            assert_eq!(len, layout.header_len);
            assert!(len <= data.len() && len <= MAX_HEADER_LEN);
            assert_eq!(Some(header.payload_len), layout.payload_len);
            assert_eq!(
                header.payload_len >> 63,
                0,
                "a length with its top bit set was accepted"
            );
            let (b0, b1) = (data[0], data[1]);
            assert_eq!(header.fin, b0 & 0x80 != 0);
            assert_eq!(header.rsv1, b0 & 0x40 != 0);
            assert_eq!(header.rsv23, b0 & 0x30 != 0);
            assert_eq!(header.opcode as u8, b0 & 0x0F);
            assert_eq!(header.opcode.is_control(), b0 & 0x08 != 0);
            match header.mask {
                Some(mask) => assert_eq!(&mask[..], &data[len - 4..len]),
                None => assert_eq!(b1 & 0x80, 0),
            }
            // Every strict prefix is incomplete: a header is never taken from part of itself.
            for cut in 0..len {
                assert_eq!(FrameHeader::decode(&data[..cut]), Ok(None), "prefix of {cut} bytes");
            }
            // Bytes after the header do not change it.
            assert_eq!(FrameHeader::decode(&data[..len]), Ok(Some((header, len))));
            // Encoding gives back the header, and the very bytes when they were minimal.
            let mut out = BytesMut::new();
            header.encode(&mut out);
            assert_eq!(FrameHeader::decode(&out), Ok(Some((header, out.len()))));
            assert!(out.len() <= len);
            if layout.minimal {
                let mut expected = data[..len].to_vec();
                if header.rsv23 {
                    expected[0] |= 0x30; // encode() keeps RSV2 and RSV3 as one flag
                }
                assert_eq!(&out[..], &expected[..]);
            }
        }
    }
}

/// `apply_mask` at any alignment, key offset and length equals bytewise XOR, whole or in two pieces.
fn check_mask(data: &[u8]) {
    let [k0, k1, k2, k3, offset, shape, payload @ ..] = data else {
        return;
    };
    let key = [*k0, *k1, *k2, *k3];
    let offset = usize::from(*offset);
    let start = usize::from(shape & 7);
    let mut buf = vec![0u8; payload.len() + 8];
    let region = &mut buf[start..start + payload.len()];
    region.copy_from_slice(payload);
    apply_mask(region, key, offset);
    let expected: Vec<u8> = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key[(offset + i) % 4])
        .collect();
    assert_eq!(region, &expected[..], "mask offset {offset} start {start}");

    let cut = usize::from(shape >> 3) % (payload.len() + 1);
    let mut pieces = payload.to_vec();
    let (a, b) = pieces.split_at_mut(cut);
    apply_mask(a, key, offset);
    apply_mask(b, key, offset + cut);
    assert_eq!(pieces, expected, "mask in pieces cut at {cut}");
}
