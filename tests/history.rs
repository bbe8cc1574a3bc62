//! History and recovery: offsets and epochs, `join` with `recover`, the
//! `history` request and `GET /api/groups/{group}/history`, JSON and binary.
//! Every test body runs on each broker that keeps history (the `every!`
//! macro below), through real sockets.

mod common;

use std::time::{Duration, Instant};

use common::brokers::{BrokerProcess, Kind};
use common::*;
use futures_util::SinkExt;
use roomcast::groups::GroupRule;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

macro_rules! every {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Memory).await })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Redis).await })*
        }
        mod nats {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Nats).await })*
        }
    };
}

every!(
    a_rejoin_recovers_exactly_what_was_missed_then_live_traffic,
    a_stale_offset_or_a_foreign_epoch_does_not_recover,
    rejoining_under_full_speed_publishing_never_duplicates_nor_skips,
    history_requests_json_binary_and_api,
    binary_joins_recover_too,
);

/// Bodies about broker outages: cluster brokers only.
macro_rules! clustered {
    ($($name:ident),* $(,)?) => {
        mod redis_outage {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Redis).await })*
        }
        mod nats_outage {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Nats).await })*
        }
    };
}

clustered!(
    a_broker_restarted_under_traffic_loses_nothing_silently,
    a_hung_broker_is_caught_up_from_history_without_a_gap,
    a_broker_that_lost_its_history_gives_a_gap_then_a_new_epoch,
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Redis,
    Nats,
}

/// Nodes sharing one broker (one node for the memory broker).
struct Cluster {
    nodes: Vec<TestServer>,
    broker: Option<BrokerProcess>,
}

impl Cluster {
    /// Node `i`, wrapping around (the memory broker has only one).
    fn node(&self, i: usize) -> &TestServer {
        &self.nodes[i % self.nodes.len()]
    }
}

/// `chat:` keeps `size` publications for a minute; other groups nothing.
fn rules(size: usize) -> Vec<GroupRule> {
    vec![GroupRule {
        prefix: "chat:".into(),
        history_size: size,
        history_ttl: Duration::from_secs(60),
        presence: false,
        join_leave: false,
    }]
}

async fn cluster(backend: Backend, nodes: usize, size: usize) -> Cluster {
    let config = roomcast::config::Config {
        groups: rules(size),
        message_rate: 0,
        // Room for everything a member may miss between two rounds of the
        // stress test (a recovery larger than the queue is refused).
        queue_messages: 16 * 1024,
        queue_bytes: 16 << 20,
        ..config()
    };
    let kind = match backend {
        Backend::Memory => {
            let _ = nodes;
            return Cluster {
                nodes: vec![start(config).await],
                broker: None,
            };
        }
        Backend::Redis => Kind::Redis,
        Backend::Nats => Kind::Nats,
    };
    let broker = BrokerProcess::start(kind);
    let mut servers = Vec::new();
    for i in 0..nodes {
        let server = start(roomcast::config::Config {
            broker: broker.url(),
            node_name: Some(format!("n{i}")),
            ..config.clone()
        })
        .await;
        wait_ready(&server).await;
        servers.push(server);
    }
    Cluster {
        nodes: servers,
        broker: Some(broker),
    }
}

/// Wait until `/readyz` says ready (the broker is up).
async fn wait_ready(server: &TestServer) {
    let deadline = Instant::now() + STEP;
    loop {
        let (status, body) = api_get(server.addr, "/readyz").await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "readyz still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Join `group` (with `recover` when given) and return the ack.
async fn join(ws: &mut Ws, group: &str, recover: Option<(u64, &str)>) -> Value {
    let mut req = json!({"type":"join","group":group,"id":"j"});
    if let Some((offset, epoch)) = recover {
        req["recover"] = json!({"offset": offset, "epoch": epoch});
    }
    let ack = request(ws, req).await;
    assert_eq!(ack["type"], "ack", "join {group}: {ack}");
    ack
}

/// Publish `n` numbered messages to `group` from `ws`, each acknowledged.
async fn publish_acked(ws: &mut Ws, group: &str, from: u64, n: u64) {
    for i in from..from + n {
        let r = request(ws, json!({"type":"publish","group":group,"data":{"n":i},"id":i})).await;
        assert_eq!(r["type"], "ack", "{r}");
    }
}

/// The next message for `group`; returns its offset and data.
async fn next_message(ws: &mut Ws) -> (u64, Value) {
    let m = recv_json(ws).await;
    assert_eq!(m["type"], "message", "{m}");
    (
        m["offset"].as_u64().unwrap_or_else(|| panic!("no offset: {m}")),
        m["data"].clone(),
    )
}

async fn a_rejoin_recovers_exactly_what_was_missed_then_live_traffic(backend: Backend) {
    let c = cluster(backend, 2, 100).await;
    let (mut publisher, _) = connect(c.node(0)).await;
    let (mut member, _) = connect(c.node(1)).await;
    let ack = join(&mut member, "chat:1", None).await;
    assert_eq!(ack["offset"], 0, "a new group starts at 0: {ack}");
    let epoch = ack["epoch"].as_str().expect("epoch").to_owned();
    assert!(ack.get("recovered").is_none(), "{ack}");
    publish_acked(&mut publisher, "chat:1", 1, 5).await;
    for want in 1..=5 {
        let (offset, data) = next_message(&mut member).await;
        assert_eq!((offset, data["n"].as_u64()), (want, Some(want)));
    }
    drop(member);
    publish_acked(&mut publisher, "chat:1", 6, 50).await;
    let (mut member, _) = connect(c.node(1)).await;
    let ack = join(&mut member, "chat:1", Some((5, &epoch))).await;
    assert_eq!(
        (
            ack["recovered"].as_bool(),
            ack["offset"].as_u64(),
            ack["epoch"].as_str()
        ),
        (Some(true), Some(55), Some(epoch.as_str())),
        "{ack}"
    );
    for want in 6..=55 {
        let (offset, data) = next_message(&mut member).await;
        assert_eq!((offset, data["n"].as_u64()), (want, Some(want)));
    }
    publish_acked(&mut publisher, "chat:1", 56, 1).await;
    assert_eq!(next_message(&mut member).await.0, 56, "then live traffic");
    // Nothing else was queued: a ping is answered next.
    let r = request(&mut member, json!({"type":"ping","id":"p"})).await;
    assert_eq!(r["type"], "pong", "{r}");
    // Groups without history carry no offset and accept no recovery.
    let ack = join(&mut member, "plain", Some((5, &epoch))).await;
    assert_eq!(ack, json!({"type":"ack","id":"j"}));
    let metrics = http_get(c.node(1).addr, "/metrics", &[]).await.1;
    assert!(metrics.contains("roomcast_recoveries_total 1"), "{metrics}");
}

async fn a_stale_offset_or_a_foreign_epoch_does_not_recover(backend: Backend) {
    let c = cluster(backend, 2, 10).await;
    let (mut publisher, _) = connect(c.node(0)).await;
    let (mut member, _) = connect(c.node(1)).await;
    let epoch = join(&mut member, "chat:2", None).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(member);
    publish_acked(&mut publisher, "chat:2", 1, 30).await;
    // Ten are kept: offsets 21 to 30.
    let (mut a, _) = connect(c.node(1)).await;
    let ack = join(&mut a, "chat:2", Some((5, &epoch))).await;
    assert_eq!(
        (
            ack["recovered"].as_bool(),
            ack["offset"].as_u64(),
            ack["epoch"].as_str()
        ),
        (Some(false), Some(30), Some(epoch.as_str())),
        "offset 6 is no longer kept: {ack}"
    );
    publish_acked(&mut publisher, "chat:2", 31, 1).await;
    assert_eq!(
        next_message(&mut a).await.0,
        31,
        "no recovered publication: live traffic next"
    );
    let (mut b, _) = connect(c.node(1)).await;
    let ack = join(&mut b, "chat:2", Some((25, "another-epoch"))).await;
    assert_eq!(
        (ack["recovered"].as_bool(), ack["offset"].as_u64()),
        (Some(false), Some(31)),
        "{ack}"
    );
    let (mut m, _) = connect(c.node(1)).await;
    let ack = join(&mut m, "chat:2", Some((31, &epoch))).await;
    assert_eq!(ack["recovered"], true, "nothing missed: {ack}");
    let ack = join(&mut m, "chat:2", Some((40, &epoch))).await;
    assert_eq!(ack["recovered"], false, "an offset from the future: {ack}");
    let r = request(&mut m, json!({"type":"ping","id":"p"})).await;
    assert_eq!(r["type"], "pong", "nothing was delivered: {r}");
    let metrics = http_get(c.node(1).addr, "/metrics", &[]).await.1;
    assert!(
        metrics.contains("roomcast_recovery_failures_total 3"),
        "{metrics}"
    );
}

/// A publisher pipelines publications as fast as the server takes them
/// while a member leaves and recovers, again and again: every offset
/// reaches it exactly once, in order.
async fn rejoining_under_full_speed_publishing_never_duplicates_nor_skips(backend: Backend) {
    const TOTAL: u64 = 4000;
    let c = cluster(backend, 2, 100_000).await;
    let group = "chat:stress";
    let (mut publisher, _) = connect(c.node(0)).await;
    // Create the group's history before the member's first join.
    publish_acked(&mut publisher, group, 0, 1).await;
    let publishing = tokio::spawn(async move {
        for i in 1..TOTAL {
            let m = json!({"type":"publish","group":group,"data":{"n":i}}).to_string();
            publisher.feed(Message::text(m)).await.unwrap();
            // Another group with the same rule in between: on NATS both
            // share one stream, so offsets are not consecutive there.
            if i % 3 == 0 {
                let m = json!({"type":"publish","group":"chat:other","data":{"n":i}}).to_string();
                publisher.feed(Message::text(m)).await.unwrap();
            }
            // Bursts at about 20,000 a second: a member that reconnects
            // misses tens to hundreds, fewer than its queue takes.
            if i % 20 == 0 {
                publisher.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        publisher.flush().await.unwrap();
        // Publications without an id are answered only on error.
        let r = request(&mut publisher, json!({"type":"ping","id":"end"})).await;
        assert_eq!(r["type"], "pong", "{r}");
    });
    // Where the member stands: (offset, epoch, last publication number).
    let mut last: Option<(u64, String, u64)> = None;
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "stuck at {last:?}");
        let (mut member, _) = connect(c.node(1 + rounds)).await;
        let ack = join(
            &mut member,
            group,
            last.as_ref().map(|(o, e, _)| (*o, e.as_str())),
        )
        .await;
        let epoch = ack["epoch"].as_str().unwrap().to_owned();
        let (mut at, mut n) = match &last {
            Some((offset, e, n)) => {
                assert_eq!(ack["recovered"], true, "round {rounds}: {ack}");
                assert_eq!(e, &epoch);
                (*offset, Some(*n))
            }
            None => (ack["offset"].as_u64().unwrap(), None),
        };
        // Read a varying number of messages, then drop the connection.
        let take = 20 + (rounds as u64 * 37) % 200;
        for _ in 0..take {
            if n == Some(TOTAL - 1) {
                break;
            }
            let (offset, data) = next_message(&mut member).await;
            let got = data["n"].as_u64().unwrap();
            if let Some(n) = n {
                assert_eq!(
                    got,
                    n + 1,
                    "round {rounds}: a duplicate or a gap at offset {offset}"
                );
            }
            assert!(offset > at, "round {rounds}: offsets go up: {offset} after {at}");
            if backend != Backend::Nats {
                assert_eq!(
                    offset,
                    at + 1,
                    "round {rounds}: one offset per publication of the group"
                );
            }
            at = offset;
            n = Some(got);
        }
        rounds += 1;
        let done = n == Some(TOTAL - 1);
        last = Some((at, epoch, n.unwrap_or(0)));
        if done {
            break;
        }
    }
    publishing.await.unwrap();
    assert!(
        rounds >= 10,
        "only {rounds} rounds: make the publisher slower or TOTAL larger"
    );
}

async fn history_requests_json_binary_and_api(backend: Backend) {
    let c = cluster(backend, 2, 10).await;
    let (mut ws, _) = connect(c.node(0)).await;
    publish_acked(&mut ws, "chat:h", 1, 3).await;
    ws.send(Message::binary({
        let mut f = 3u32.to_le_bytes().to_vec();
        f.push(6);
        f.extend_from_slice(b"chat:h\x00\xffbin");
        f
    }))
    .await
    .unwrap();
    let h = request(
        &mut ws,
        json!({"type":"history","group":"chat:h","since":1,"limit":2,"id":7}),
    )
    .await;
    assert_eq!(h["type"], "history", "{h}");
    assert_eq!(
        (h["id"].as_u64(), h["offset"].as_u64()),
        (Some(7), Some(4)),
        "{h}"
    );
    assert_eq!(
        (h["complete"].as_bool(), h["more"].as_bool()),
        (Some(true), Some(true)),
        "{h}"
    );
    let pubs = h["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 2);
    assert_eq!(
        (pubs[0]["offset"].as_u64(), pubs[0]["data"]["n"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(pubs[0]["from"].is_string(), "{h}");
    // The latest, binary payloads in base64.
    let h = request(&mut ws, json!({"type":"history","group":"chat:h","limit":1})).await;
    assert_eq!(
        h["publications"],
        json!([{"offset":4,"from":h["publications"][0]["from"],"binary":"AP9iaW4="}])
    );
    // Errors.
    let e = request(&mut ws, json!({"type":"history","group":"plain","id":1})).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("no_history")),
        "{e}"
    );
    for (bad, what) in [
        (
            json!({"type":"history","group":"chat:h","limit":0,"id":1}),
            "limit",
        ),
        (
            json!({"type":"history","group":"chat:h","limit":1001,"id":1}),
            "limit",
        ),
        (
            json!({"type":"history","group":"chat:h","since":-1,"id":1}),
            "since",
        ),
        (
            json!({"type":"join","group":"chat:h","recover":{"offset":1},"id":1}),
            "recover",
        ),
        (
            json!({"type":"join","group":"chat:h","recover":{"offset":1,"epoch":"x".repeat(65)},"id":1}),
            "recover.epoch",
        ),
    ] {
        let e = request(&mut ws, bad.clone()).await;
        assert_eq!(e["code"], "bad_request", "{bad}: {e}");
        assert!(e["message"].as_str().unwrap().contains(what), "{bad}: {e}");
    }
    // Binary history: flags, since, limit, group.
    let mut f = 9u32.to_le_bytes().to_vec();
    f.push(1);
    f.extend_from_slice(&2u64.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(b"chat:h");
    ws.send(Message::binary(f)).await.unwrap();
    let Message::Binary(page) = recv(&mut ws).await else {
        panic!("expected a binary page")
    };
    assert_eq!(&page[..4], &10u32.to_le_bytes());
    assert_eq!(page[4], 1, "complete, no more");
    assert_eq!(u64::from_le_bytes(page[5..13].try_into().unwrap()), 4);
    let elen = page[13] as usize;
    let mut at = 14 + elen;
    let glen = page[at] as usize;
    assert_eq!(&page[at + 1..at + 1 + glen], b"chat:h");
    at += 1 + glen;
    assert_eq!(u32::from_le_bytes(page[at..at + 4].try_into().unwrap()), 2);
    at += 4;
    let mut items = Vec::new();
    for _ in 0..2 {
        let offset = u64::from_le_bytes(page[at..at + 8].try_into().unwrap());
        let kind = page[at + 8];
        let len = u32::from_le_bytes(page[at + 9..at + 13].try_into().unwrap()) as usize;
        items.push((offset, kind, page[at + 13..at + 13 + len].to_vec()));
        at += 13 + len;
    }
    assert_eq!(at, page.len());
    assert_eq!(
        items,
        vec![(3, 0, br#"{"n":3}"#.to_vec()), (4, 1, b"\x00\xffbin".to_vec())]
    );
    // The API.
    let (status, body) = api_get(c.node(1).addr, "/api/groups/chat:h/history?since=3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offset"], 4);
    assert_eq!(body["publications"].as_array().unwrap().len(), 1, "{body}");
    let (status, body) = api_get(c.node(1).addr, "/api/groups/plain/history").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("no_history"))
    );
    let (status, body) = api_get(c.node(1).addr, "/api/groups/chat:h/history?limit=5000").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, _) = api_get(c.node(1).addr, "/api/groups/chat:h/history?since=x").await;
    assert_eq!(status, 400);
}

async fn binary_joins_recover_too(backend: Backend) {
    let c = cluster(backend, 2, 100).await;
    let (mut publisher, _) = connect(c.node(0)).await;
    publish_acked(&mut publisher, "chat:b", 1, 3).await;
    let (mut member, _) = connect(c.node(1)).await;
    // A plain binary join of a group with history is answered (type 7).
    let mut f = 1u32.to_le_bytes().to_vec();
    f.extend_from_slice(b"chat:b");
    member.send(Message::binary(f)).await.unwrap();
    let (recovered, offset, epoch) = joined(&mut member).await;
    assert_eq!((recovered, offset), (2, 3), "not asked, at 3");
    drop(member);
    publish_acked(&mut publisher, "chat:b", 4, 2).await;
    let mut payload = 2u64.to_le_bytes().to_vec();
    payload.push(epoch.len() as u8);
    payload.extend_from_slice(epoch.as_bytes());
    payload.extend_from_slice(b"chat:b");
    let mut f = 6u32.to_le_bytes().to_vec();
    f.extend_from_slice(&payload);
    let (mut member, _) = connect(c.node(1)).await;
    member.send(Message::binary(f)).await.unwrap();
    assert_eq!(joined(&mut member).await, (1, 5, epoch.clone()));
    for want in 3..=5u64 {
        let m = recv_json(&mut member).await;
        assert_eq!(
            (m["offset"].as_u64(), m["data"]["n"].as_u64()),
            (Some(want), Some(want)),
            "{m}"
        );
    }
    // A binary publication reaches it as type 8, with its offset.
    let mut f = 3u32.to_le_bytes().to_vec();
    f.push(6);
    f.extend_from_slice(b"chat:bhello");
    publisher.send(Message::binary(f)).await.unwrap();
    let Message::Binary(m) = recv(&mut member).await else {
        panic!("expected binary")
    };
    let mut want = 8u32.to_le_bytes().to_vec();
    want.push(6);
    want.extend_from_slice(b"chat:b");
    want.extend_from_slice(&6u64.to_le_bytes());
    want.extend_from_slice(b"hello");
    assert_eq!(m.to_vec(), want);
    // Malformed binary joins are refused.
    for bad in [&b"\x06\0\0\0\x01"[..], b"\x06\0\0\0\x01\0\0\0\0\0\0\0\x09ab"] {
        member.send(Message::binary(bad.to_vec())).await.unwrap();
        let e = recv_json(&mut member).await;
        assert_eq!(e["code"], "bad_request", "{e}");
    }
}

/// A binary join answer: (recovered byte, offset, epoch).
async fn joined(ws: &mut Ws) -> (u8, u64, String) {
    let Message::Binary(b) = recv(ws).await else {
        panic!("expected a binary joined frame")
    };
    assert_eq!(&b[..4], &7u32.to_le_bytes(), "{b:?}");
    let offset = u64::from_le_bytes(b[5..13].try_into().unwrap());
    let len = b[13] as usize;
    let epoch = String::from_utf8(b[14..14 + len].to_vec()).unwrap();
    assert_eq!(&b[14 + len..], b"chat:b");
    (b[4], offset, epoch)
}

/// Publish `group` messages numbered from 0 as fast as acks come back
/// (pipelined, 32 in flight) until `stop`; returns the numbers acked.
fn publish_until(
    mut ws: Ws,
    group: &'static str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut next = 0u64;
        let mut in_flight = 0;
        loop {
            while in_flight < 32 && !*stop.borrow() {
                let m = json!({"type":"publish","group":group,"data":{"n":next},"id":next});
                ws.send(Message::text(m.to_string())).await.unwrap();
                next += 1;
                in_flight += 1;
            }
            if in_flight == 0 {
                return acked;
            }
            let r = recv_json(&mut ws).await;
            in_flight -= 1;
            match r["type"].as_str() {
                Some("ack") => acked.push(r["id"].as_u64().unwrap()),
                Some("error") => {
                    assert_eq!(r["code"], "broker_unavailable", "{r}");
                    // Refused while the broker is down: pace the retries.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => panic!("unexpected {r}"),
            }
        }
    })
}

/// Read `member`'s messages in `group` until `until` says stop; check
/// offsets: consecutive within an epoch, a `gap` allowed only when `gaps`.
/// Returns the numbers received and the gaps seen.
async fn read_checked(
    member: &mut Ws,
    mut at: u64,
    gaps: bool,
    until: impl Fn(&[u64]) -> bool,
) -> (Vec<u64>, usize) {
    let mut got = Vec::new();
    let mut seen_gaps = 0;
    let mut after_gap = false;
    while !until(&got) {
        let m = recv_json(member).await;
        match m["type"].as_str() {
            Some("gap") => {
                assert!(gaps, "unexpected gap after {at}: {m}");
                seen_gaps += 1;
                after_gap = true;
            }
            Some("message") => {
                let offset = m["offset"].as_u64().unwrap();
                if after_gap {
                    // Whatever comes after a gap is consecutive again.
                    after_gap = false;
                } else {
                    assert_eq!(
                        offset,
                        at + 1,
                        "a duplicate or a gap without `gap` after {at}: {m}"
                    );
                }
                at = offset;
                got.push(m["data"]["n"].as_u64().unwrap());
            }
            _ => panic!("unexpected {m}"),
        }
    }
    (got, seen_gaps)
}

/// The broker hangs (SIGSTOP) long enough for both nodes to drop their
/// connections, then resumes with its data: the member's node catches up
/// from history, so the member gets every publication the broker accepted,
/// in order, with no `gap`.
async fn a_hung_broker_is_caught_up_from_history_without_a_gap(backend: Backend) {
    let c = cluster(backend, 2, 100_000).await;
    let (publisher, _) = connect(c.node(0)).await;
    let (mut member, _) = connect(c.node(1)).await;
    let ack = join(&mut member, "chat:outage", None).await;
    let start = ack["offset"].as_u64().unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let publishing = publish_until(publisher, "chat:outage", stop);
    let (before, _) = read_checked(&mut member, start, false, |got| got.len() >= 200).await;
    let broker = c.broker.as_ref().unwrap();
    broker.pause(true);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    broker.pause(false);
    wait_ready(c.node(0)).await;
    wait_ready(c.node(1)).await;
    // Traffic after the outage, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    let acked = publishing.await.unwrap();
    let last = *acked.iter().max().unwrap();
    let at = start + before.len() as u64;
    let (after, _) = read_checked(&mut member, at, false, |got| got.last() == Some(&last)).await;
    let got: std::collections::HashSet<u64> = before.iter().chain(&after).copied().collect();
    let missing: Vec<u64> = acked.iter().filter(|n| !got.contains(n)).copied().collect();
    assert!(missing.is_empty(), "acked but not delivered: {missing:?}");
    let metrics = http_get(c.node(1).addr, "/metrics", &[]).await.1;
    assert!(metrics.contains("roomcast_gaps_recovered_total 1"), "{metrics}");
    assert!(metrics.contains("roomcast_gaps_total 0"), "{metrics}");
}

/// The broker dies and comes back empty: the group's history (and epoch)
/// is gone, so the member gets a `gap`, then publications of the new
/// epoch; a recovery from the old epoch fails.
async fn a_broker_that_lost_its_history_gives_a_gap_then_a_new_epoch(backend: Backend) {
    let mut c = cluster(backend, 2, 1000).await;
    let (mut publisher, _) = connect(c.node(0)).await;
    let (mut member, _) = connect(c.node(1)).await;
    let ack = join(&mut member, "chat:lost", None).await;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    publish_acked(&mut publisher, "chat:lost", 1, 3).await;
    read_checked(&mut member, 0, false, |got| got.len() == 3).await;
    let broker = c.broker.as_mut().unwrap();
    broker.restart_empty();
    wait_ready(c.node(0)).await;
    wait_ready(c.node(1)).await;
    let g = recv_json(&mut member).await;
    assert_eq!(g, json!({"type":"gap","group":"chat:lost"}));
    // Node 0 may still be reconnecting its publisher side: retry.
    let deadline = Instant::now() + STEP;
    loop {
        let r = request(
            &mut publisher,
            json!({"type":"publish","group":"chat:lost","data":{"n":9},"id":9}),
        )
        .await;
        if r["type"] == "ack" {
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (offset, data) = next_message(&mut member).await;
    assert_eq!((offset, data["n"].as_u64()), (1, Some(9)), "offsets start again");
    let (mut late, _) = connect(c.node(1)).await;
    let ack = join(&mut late, "chat:lost", Some((3, &epoch))).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(ack["epoch"].as_str(), Some(epoch.as_str()));
    let metrics = http_get(c.node(1).addr, "/metrics", &[]).await.1;
    assert!(metrics.contains("roomcast_gaps_total 1"), "{metrics}");
}

/// The broker is killed and started again while a publisher publishes:
/// the member receives every publication the broker acknowledged, in
/// order, or a `gap` where some are missing. NATS keeps its JetStream store
/// across the restart, so its nodes catch up from history with no gap;
/// the test Redis runs without persistence, so it comes back empty and
/// members get a gap.
async fn a_broker_restarted_under_traffic_loses_nothing_silently(backend: Backend) {
    let mut c = cluster(backend, 2, 100_000).await;
    let (publisher, _) = connect(c.node(0)).await;
    let (mut member, _) = connect(c.node(1)).await;
    let start = join(&mut member, "chat:restart", None).await["offset"]
        .as_u64()
        .unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let publishing = publish_until(publisher, "chat:restart", stop);
    let (before, _) = read_checked(&mut member, start, false, |got| got.len() >= 100).await;
    let broker = c.broker.as_mut().unwrap();
    broker.kill();
    broker.restart();
    wait_ready(c.node(0)).await;
    wait_ready(c.node(1)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    let acked = publishing.await.unwrap();
    let last = *acked.iter().max().unwrap();
    let at = start + before.len() as u64;
    let (after, gaps) = read_checked(&mut member, at, true, |got| got.last() == Some(&last)).await;
    let got: std::collections::HashSet<u64> = before.iter().chain(&after).copied().collect();
    let missing: Vec<u64> = acked.iter().filter(|n| !got.contains(n)).copied().collect();
    match backend {
        Backend::Nats => {
            assert_eq!(gaps, 0, "JetStream kept its store: caught up without a gap");
            assert!(missing.is_empty(), "acked but not delivered: {missing:?}");
        }
        _ => {
            // The history (and its epoch) is gone: nothing to catch up from.
            assert!(gaps > 0, "Redis came back empty, yet no gap");
        }
    }
}
