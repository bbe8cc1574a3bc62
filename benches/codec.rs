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
use roomcast::ws::deflate;
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
            let from = roomcast::id::ClientId { node: None, conn: 17 };
            b.iter(|| {
                protocol::message_json(
                    Some("room-42"),
                    None,
                    Some(&from),
                    None,
                    black_box(data.as_bytes()),
                )
            })
        });
        let raw = vec![7u8; size];
        g.bench_with_input(BenchmarkId::new("binary", size), &raw, |b, raw| {
            b.iter(|| protocol::message_binary("room-42", None, black_box(raw)))
        });
    }
    g.finish();
}

/// A dashboard/chat-like JSON publication of about `size` bytes: an array
/// of objects with the same keys, varied values (what real fan-out carries).
fn json_payload(size: usize) -> Vec<u8> {
    let words = [
        "alpha", "beta", "gamma", "delta", "deploy", "green", "latency", "p99", "ok", "warn",
    ];
    let mut x = 0x2545_f491u32;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut out = String::from("[");
    let mut i = 0u64;
    while out.len() < size {
        if i > 0 {
            out.push(',');
        }
        let w = |n: u32| words[n as usize % words.len()];
        out.push_str(&format!(
            r#"{{"id":{},"user":"user-{}","ts":{},"status":"{}","text":"{} {} {}","value":{}.{:02},"tags":["{}","{}"]}}"#,
            1000 + i,
            next() % 200,
            1_764_633_600_000u64 + i * 1370,
            w(next()),
            w(next()),
            w(next()),
            w(next()),
            next() % 1000,
            next() % 100,
            w(next()),
            w(next()),
        ));
        i += 1;
    }
    out.push(']');
    out.into_bytes()
}

fn compress_messages(c: &mut Criterion) {
    let mut g = c.benchmark_group("compress");
    for size in [1024usize, 16 * 1024] {
        let payload = json_payload(size);
        g.throughput(Throughput::Bytes(payload.len() as u64));
        for level in [1u32, 3, 6, 9] {
            let z = deflate::compress(&payload, 15, level).expect("JSON compresses");
            println!(
                "compress/{size}/level {level}: {} -> {} bytes ({:.1}% of the input)",
                payload.len(),
                z.len(),
                100.0 * z.len() as f64 / payload.len() as f64
            );
            g.bench_with_input(
                BenchmarkId::new(format!("level{level}"), size),
                &payload,
                |b, p| b.iter(|| deflate::compress(black_box(p), 15, level)),
            );
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    decode_frames,
    parse_requests,
    encode_messages,
    compress_messages
);
criterion_main!(benches);
