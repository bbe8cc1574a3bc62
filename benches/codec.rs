//! Micro-benchmarks of the per-message work that does not depend on the
//! number of recipients: decoding a client frame, parsing a request, and
//! encoding the frame every member will share.
//!
//! Run: `cargo bench --bench codec`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use roomcast::protocol;
use roomcast::ws::Decoder;
use roomcast::ws::decoder::client_frame;
use roomcast::ws::frame::{OP_BINARY, OP_TEXT};

fn decode_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_frame");
    for size in [64usize, 1024, 16 * 1024] {
        let text = format!(
            r#"{{"type":"publish","group":"g","data":"{}"}}"#,
            "x".repeat(size)
        );
        let wire = client_frame(true, OP_TEXT, [1, 2, 3, 4], text.as_bytes());
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_with_input(BenchmarkId::new("text", size), &wire, |b, wire| {
            let mut d = Decoder::new(1 << 20);
            let mut out = Vec::with_capacity(1);
            b.iter(|| {
                d.feed(black_box(wire), &mut out).unwrap();
                black_box(out.pop());
            });
        });
        let wire = client_frame(true, OP_BINARY, [1, 2, 3, 4], &vec![7u8; size]);
        g.bench_with_input(BenchmarkId::new("binary", size), &wire, |b, wire| {
            let mut d = Decoder::new(1 << 20);
            let mut out = Vec::with_capacity(1);
            b.iter(|| {
                d.feed(black_box(wire), &mut out).unwrap();
                black_box(out.pop());
            });
        });
    }
    g.finish();
}

fn parse_requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_request");
    let publish = r#"{"type":"publish","group":"room-42","data":{"text":"hello","n":[1,2,3]},"id":17}"#;
    g.bench_function("json_publish", |b| {
        b.iter(|| protocol::parse_text(black_box(publish)).unwrap())
    });
    let join = r#"{"type":"join","group":"room-42","id":1}"#;
    g.bench_function("json_join", |b| {
        b.iter(|| protocol::parse_text(black_box(join)).unwrap())
    });
    let mut bin = b"\x03\0\0\0\x07room-42".to_vec();
    bin.extend_from_slice(&[0u8; 64]);
    g.bench_function("binary_publish", |b| {
        b.iter(|| protocol::parse_binary(black_box(&bin)).unwrap())
    });
    g.finish();
}

fn encode_messages(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_message");
    for size in [64usize, 1024, 16 * 1024] {
        let data = format!("\"{}\"", "x".repeat(size));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("json", size), &data, |b, data| {
            b.iter(|| protocol::message_json(Some("room-42"), Some(17), None, black_box(data.as_bytes())))
        });
        let raw = vec![7u8; size];
        g.bench_with_input(BenchmarkId::new("binary", size), &raw, |b, raw| {
            b.iter(|| protocol::message_binary("room-42", black_box(raw)))
        });
    }
    g.finish();
}

criterion_group!(benches, decode_frames, parse_requests, encode_messages);
criterion_main!(benches);
