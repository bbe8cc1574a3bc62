//! Hub fan-out: queueing one published frame to 1, 100 and 10,000 members.
//! Criterion reports the time per publication; divide by the member count
//! for the cost per recipient (also printed as elements/s throughput).
//!
//! Before each publication the members' queues are emptied (outside the
//! timed part), so every push succeeds, as it does for members who read.
//!
//! Run: `cargo bench --bench fanout`.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use roomcast::config::SlowConsumerPolicy;
use roomcast::hub::{Hub, HubConfig};
use roomcast::outbox::Outbox;
use roomcast::prepared::{Encoding, Prepared};
use roomcast::protocol;

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for members in [1usize, 100, 10_000] {
        let hub = Hub::new(
            HubConfig {
                queue_messages: 1024,
                queue_bytes: 1 << 20,
                policy: SlowConsumerPolicy::Disconnect,
                no_echo: false,
                // Queueing only: no shard tasks run here.
                flushers: 0,
                compression_threshold: 256,
                compression_level: 1,
                first_id: 1,
            },
            Arc::default(),
        );
        let outboxes: Vec<Arc<Outbox>> = (0..members)
            .map(|_| hub.register(true, Encoding::PLAIN))
            .collect();
        for o in &outboxes {
            hub.join("room", o, false);
        }
        let frame = Prepared::text(
            protocol::message_json(
                Some("room"),
                None,
                Some(&roomcast::id::ClientId { node: None, conn: 1 }),
                None,
                &[b'1'; 64],
            ),
            hub.compression(),
        );
        g.throughput(Throughput::Elements(members as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(members),
            &frame,
            |b, frame: &Prepared| {
                b.iter_batched(
                    // Untimed: empty every queue, so each publication finds room.
                    || drain(&outboxes),
                    |()| black_box(hub.fanout("room", frame, None, None)),
                    BatchSize::PerIteration,
                );
            },
        );
    }
    g.finish();
}

/// Take everything queued, as the connections' writers would.
fn drain(outboxes: &[Arc<Outbox>]) {
    let mut sink = Vec::new();
    for o in outboxes {
        o.pop_batch(&mut sink, usize::MAX, usize::MAX);
        let bytes: usize = sink.iter().map(Bytes::len).sum();
        o.written(sink.len(), bytes);
        sink.clear();
    }
}

criterion_group!(benches, fanout);
criterion_main!(benches);
