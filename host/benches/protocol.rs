//! Micro-benchmarks of the sans-IO protocol: the per-message work that does not
//! depend on sockets or the plugin. `cargo bench -p wsplug-host --bench protocol`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wsplug::ws::frame::{FrameHeader, Opcode};
use wsplug::ws::mask::apply_mask;
use wsplug::ws::protocol::{Protocol, ProtocolConfig};
use wsplug::ws::utf8::Utf8Validator;

const SIZES: [usize; 2] = [20, 16 * 1024];

/// `count` masked client text frames of `size` ASCII bytes each, back to back.
fn client_frames(size: usize, count: usize) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = BytesMut::new();
    for _ in 0..count {
        FrameHeader {
            fin: true,
            rsv1: false,
            rsv23: false,
            opcode: Opcode::Text,
            mask: Some(mask),
            payload_len: size as u64,
        }
        .encode(&mut out);
        let mut payload = vec![b'x'; size];
        apply_mask(&mut payload, mask, 0);
        out.extend_from_slice(&payload);
    }
    out.to_vec()
}

fn config() -> ProtocolConfig {
    ProtocolConfig {
        max_message_size: 1 << 20,
        deflate: None,
        deflate_level: 6,
        idle_timeout: Duration::from_secs(5),
        close_timeout: Duration::from_secs(5),
    }
}

fn decode_messages(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("read text messages");
    for size in SIZES {
        let count = (64 * 1024 / size).max(1);
        let frames = client_frames(size, count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(format!("{size} B"), |b| {
            b.iter(|| {
                let mut protocol = Protocol::new(config(), now);
                let mut input = BytesMut::from(&frames[..]);
                let mut messages = 0;
                while let Some(event) = protocol.read(&mut input, now).expect("valid frames") {
                    black_box(event);
                    messages += 1;
                }
                assert_eq!(messages, count);
            })
        });
    }
    group.finish();
}

fn encode_messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("send text messages");
    for size in SIZES {
        let text = "x".repeat(size);
        group.throughput(Throughput::Bytes(size as u64));
        let mut protocol = Protocol::new(config(), Instant::now());
        group.bench_function(format!("{size} B"), |b| {
            b.iter(|| {
                protocol.send_text(black_box(&text)).expect("open");
                let written = protocol.output().len();
                protocol.advance_output(written);
            })
        });
    }
    group.finish();
}

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for size in SIZES {
        let mut data = vec![0xA5u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("{size} B"), |b| {
            b.iter(|| apply_mask(black_box(&mut data), [1, 2, 3, 4], 0))
        });
    }
    group.finish();
}

fn validate_utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate UTF-8");
    for size in SIZES {
        let text: Vec<u8> = "héllo wörld ".bytes().cycle().take(size).collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("{size} B"), |b| {
            b.iter(|| {
                let mut validator = Utf8Validator::default();
                let _ = validator.feed(black_box(&text));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode_messages, encode_messages, unmask, validate_utf8);
criterion_main!(benches);
