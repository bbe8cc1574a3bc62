//! A cluster: two or three roomcast nodes sharing groups through a real
//! Redis or NATS server that each test starts on its own port. Every test
//! body runs against both brokers (the `both!` macro below).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::brokers::{BrokerProcess, Kind};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Kind::Redis).await })*
        }
        mod nats {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Kind::Nats).await })*
        }
    };
}

both!(
    publications_cross_nodes,
    send_disconnect_and_broadcast_reach_every_node,
    ten_thousand_publications_arrive_complete_and_in_order,
    odd_group_names_map_without_collisions,
    joins_and_leaves_racing_keep_the_subscription,
    a_broker_outage_is_reported_then_healed_with_gaps,
    nothing_acknowledged_is_lost_silently_when_the_broker_dies_under_traffic,
    a_hung_broker_stalls_no_session_and_is_noticed,
    a_killed_node_takes_only_its_own_connections,
);

/// Start node `name` on `broker`, and wait until its broker is up.
async fn node(broker: &BrokerProcess, name: &str) -> TestServer {
    let server = start(roomcast::config::Config {
        broker: broker.url(),
        node_name: Some(name.into()),
        // The pipelined tests publish far faster than the default rate.
        message_rate: 0,
        ..config()
    })
    .await;
    wait_ready(&server, true).await;
    server
}

/// Wait until `/readyz` says ready (`true`) or not.
async fn wait_ready(server: &TestServer, ready: bool) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let (status, body) = api_get(server.addr, "/readyz").await;
        if (status == 200) == ready {
            return body;
        }
        assert!(Instant::now() < deadline, "readyz still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn join(ws: &mut Ws, group: &str) {
    let r = request(ws, json!({"type":"join","group":group,"id":"j"})).await;
    assert_eq!(r, json!({"type":"ack","id":"j"}), "join {group}");
}

/// Join with the binary protocol (no ack in that protocol): a ping after
/// it is answered once the join is done.
async fn join_binary(ws: &mut Ws, group: &str) {
    let mut frame = 1u32.to_le_bytes().to_vec();
    frame.extend_from_slice(group.as_bytes());
    ws.send(Message::binary(frame)).await.unwrap();
    let r = request(ws, json!({"type":"ping","id":"p"})).await;
    assert_eq!(r, json!({"type":"pong","id":"p"}));
}

fn binary_publish(group: &str, data: &[u8]) -> Message {
    let mut frame = 3u32.to_le_bytes().to_vec();
    frame.push(group.len() as u8);
    frame.extend_from_slice(group.as_bytes());
    frame.extend_from_slice(data);
    Message::binary(frame)
}

/// Nothing more arrives on `ws` for a little while.
async fn quiet(ws: &mut Ws) {
    loop {
        match tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("unexpected: {other:?}"),
        }
    }
}

async fn metric(server: &TestServer, name: &str) -> f64 {
    let (_, text) = http_get(server.addr, "/metrics", &[]).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

async fn publications_cross_nodes(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    let a = node(&broker, "node-a").await;
    let b = node(&broker, "node-b").await;
    let c = node(&broker, "node-c").await;
    let (mut on_a, a_id) = connect(&a).await;
    let (mut on_b, _) = connect(&b).await;
    let (mut publisher, p_id) = connect(&c).await;
    assert!(a_id.starts_with("node-a."), "{a_id}");
    assert!(p_id.starts_with("node-c."), "{p_id}");
    join(&mut on_a, "room").await;
    join_binary(&mut on_b, "room").await;
    let stats: Value = serde_json::from_str(&http_get(a.addr, "/stats?format=json", &[]).await.1).unwrap();
    assert_eq!(
        (stats["node"].as_str(), stats["broker_up"].as_bool()),
        (Some("node-a"), Some(true))
    );

    // A JSON publish from a node where the group has no member.
    let r = request(
        &mut publisher,
        json!({"type":"publish","group":"room","data":{"n":1},"id":1}),
    )
    .await;
    assert_eq!(r, json!({"type":"ack","id":1}));
    let want = json!({"type":"message","group":"room","from":p_id,"data":{"n":1}});
    assert_eq!(recv_json(&mut on_a).await, want);
    assert_eq!(recv_json(&mut on_b).await, want);

    // A binary publish: binary to every member.
    publisher.send(binary_publish("room", b"\x00bin")).await.unwrap();
    let mut expected = 4u32.to_le_bytes().to_vec();
    expected.extend_from_slice(b"\x04room\x00bin");
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(recv(ws).await, Message::binary(expected.clone()));
    }

    // The API of a third node.
    let (status, body) = api_post(c.addr, "/api/publish", json!({"group":"room","data":"api"})).await;
    assert_eq!((status, body), (200, json!({"published": true})));
    let want = json!({"type":"message","group":"room","data":"api"});
    assert_eq!(recv_json(&mut on_a).await, want);
    assert_eq!(recv_json(&mut on_b).await, want);

    // Exactly once: nothing else arrives, and the publisher (no member)
    // gets nothing.
    quiet(&mut on_a).await;
    quiet(&mut on_b).await;
    quiet(&mut publisher).await;
    for n in [a, b, c] {
        n.stop().await;
    }
}

async fn send_disconnect_and_broadcast_reach_every_node(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    let a = node(&broker, "a").await;
    let b = node(&broker, "b.two").await;
    let (mut x, x_id) = connect(&a).await;
    let (mut y, y_id) = connect(&b).await;
    assert!(y_id.starts_with("b.two."), "{y_id}");

    // WebSocket send across nodes.
    let r = request(&mut x, json!({"type":"send","to":y_id,"data":{"hi":1},"id":1})).await;
    assert_eq!(r, json!({"type":"ack","id":1}));
    assert_eq!(
        recv_json(&mut y).await,
        json!({"type":"message","from":x_id,"data":{"hi":1}})
    );
    // A malformed id is unknown at once.
    let r = request(&mut x, json!({"type":"send","to":"nope","data":1,"id":2})).await;
    assert_eq!(r["code"], "unknown_connection", "{r}");

    // /api/send on one node to a connection of the other.
    let (status, _) = api_post(a.addr, "/api/send", json!({"to":y_id,"data":"direct"})).await;
    assert_eq!(status, 200);
    assert_eq!(recv_json(&mut y).await, json!({"type":"message","data":"direct"}));

    // /api/broadcast reaches both nodes' connections.
    let (status, _) = api_post(b.addr, "/api/broadcast", json!({"data":"all"})).await;
    assert_eq!(status, 200);
    for ws in [&mut x, &mut y] {
        assert_eq!(recv_json(ws).await, json!({"type":"message","data":"all"}));
    }

    // /api/disconnect on one node closes a connection of the other.
    let (status, body) = api_post(
        a.addr,
        "/api/disconnect",
        json!({"conn":y_id,"code":4100,"reason":"bye"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["forwarded"], true);
    let (_, frame) = recv_until_close(&mut y).await;
    let frame = frame.expect("close frame");
    assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4100, "bye"));
    // And one of its own, as on a single node.
    let (status, body) = api_post(a.addr, "/api/disconnect", json!({"conn":x_id})).await;
    assert_eq!((status, body["already_closing"].as_bool()), (200, Some(false)));
    a.stop().await;
    b.stop().await;
}

async fn ten_thousand_publications_arrive_complete_and_in_order(kind: Kind) {
    const N: usize = 10_000;
    let broker = BrokerProcess::start(kind);
    let a = node(&broker, "a").await;
    let b = node(&broker, "b").await;
    let c = node(&broker, "c").await;
    let (mut m1, _) = connect(&a).await;
    let (mut m2, _) = connect(&b).await;
    join(&mut m1, "seq").await;
    join(&mut m2, "seq").await;
    let (publisher, _) = connect(&c).await;
    let (mut tx, mut rx) = publisher.split();
    // Pipelined: every publication is sent before any ack is read.
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let m = json!({"type":"publish","group":"seq","data":i,"id":i}).to_string();
            tx.feed(Message::text(m)).await.unwrap();
        }
        tx.flush().await.unwrap();
        tx
    });
    let acks = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            let m = tokio::time::timeout(STEP, rx.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "ack", "{v}");
                n += 1;
            }
        }
    });
    // Both members read at once (one left unread would be a slow consumer).
    let readers: Vec<_> = [m1, m2]
        .into_iter()
        .map(|mut m| {
            tokio::spawn(async move {
                for i in 0..N {
                    let v = recv_json(&mut m).await;
                    assert_eq!(v["data"], i, "publication {i} out of order or missing: {v}");
                }
                quiet(&mut m).await;
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    acks.await.unwrap();
    drop(sender.await.unwrap());
    for n in [a, b, c] {
        n.stop().await;
    }
}

async fn odd_group_names_map_without_collisions(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    let a = node(&broker, "a").await;
    let b = node(&broker, "b").await;
    let names = [
        "a.b",
        "a_b",
        "a",
        "a.*",
        "*",
        ">",
        "a.>",
        "with space",
        "ünïcödé 🎉",
        "a:b",
        "roomcast:g:a",
        "roomcast.g.YQ",
        "YQ",
        "%2e",
        "all",
        "node",
        "x\"y\\z",
    ];
    let mut members = Vec::new();
    for name in names {
        let (mut ws, _) = connect(&a).await;
        join(&mut ws, name).await;
        members.push(ws);
    }
    let (mut publisher, _) = connect(&b).await;
    for (i, name) in names.iter().enumerate() {
        let r = request(
            &mut publisher,
            json!({"type":"publish","group":name,"data":i,"id":i}),
        )
        .await;
        assert_eq!(r["type"], "ack", "{name}: {r}");
    }
    for (i, (name, ws)) in names.iter().zip(&mut members).enumerate() {
        let v = recv_json(ws).await;
        assert_eq!(
            (v["group"].as_str(), v["data"].as_u64()),
            (Some(*name), Some(i as u64)),
            "{v}"
        );
        quiet(ws).await;
    }
    a.stop().await;
    b.stop().await;
}

async fn joins_and_leaves_racing_keep_the_subscription(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    let a = node(&broker, "a").await;
    let b = node(&broker, "b").await;
    let (mut publisher, _) = connect(&b).await;
    for round in 0..5 {
        let group = format!("race-{round}");
        // Eight clients join and leave the same group over and over, at
        // once; the last one stays.
        let mut tasks = Vec::new();
        for k in 0..8 {
            let (mut ws, _) = connect(&a).await;
            let group = group.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    join(&mut ws, &group).await;
                    if k == 0 && i == 19 {
                        break;
                    }
                    let r = request(&mut ws, json!({"type":"leave","group":group,"id":"l"})).await;
                    assert_eq!(r["type"], "ack");
                }
                ws
            }));
        }
        let mut clients = Vec::new();
        for t in tasks {
            clients.push(t.await.unwrap());
        }
        let r = request(
            &mut publisher,
            json!({"type":"publish","group":group,"data":round,"id":1}),
        )
        .await;
        assert_eq!(r["type"], "ack");
        let v = recv_json(&mut clients[0]).await;
        assert_eq!(v["data"], round, "round {round}: {v}");
        for ws in &mut clients[1..] {
            quiet(ws).await;
        }
    }
    a.stop().await;
    b.stop().await;
}

async fn a_broker_outage_is_reported_then_healed_with_gaps(kind: Kind) {
    let mut broker = BrokerProcess::start(kind);
    let a = node(&broker, "a").await;
    let b = node(&broker, "b").await;
    let (mut member, _) = connect(&a).await;
    let (mut binary_member, _) = connect(&a).await;
    join(&mut member, "g").await;
    join_binary(&mut binary_member, "g").await;
    let (mut publisher, _) = connect(&b).await;
    assert_eq!(metric(&a, "roomcast_broker_up").await, 1.0);

    broker.kill();
    let killed = Instant::now();
    let body = wait_ready(&a, false).await;
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "noticed after {:?}",
        killed.elapsed()
    );
    let kind_name = format!("{kind:?}").to_lowercase();
    assert_eq!(body["error"]["code"], "broker_unavailable", "{body}");
    assert_eq!(body["broker"]["kind"], kind_name.as_str(), "{body}");
    wait_ready(&b, false).await;
    assert_eq!(metric(&a, "roomcast_broker_up").await, 0.0);
    // Publishing is refused, never silently acked.
    let r = request(
        &mut publisher,
        json!({"type":"publish","group":"g","data":0,"id":1}),
    )
    .await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some("broker_unavailable")),
        "{r}"
    );
    let (status, body) = api_post(b.addr, "/api/publish", json!({"group":"g","data":0})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("broker_unavailable")),
        "{body}"
    );
    // So is a join that needs a subscription.
    let r = request(&mut publisher, json!({"type":"join","group":"new","id":2})).await;
    assert_eq!(r["code"], "broker_unavailable", "{r}");

    broker.restart();
    wait_ready(&a, true).await;
    wait_ready(&b, true).await;
    assert_eq!(recv_json(&mut member).await, json!({"type":"gap","group":"g"}));
    let mut gap = 5u32.to_le_bytes().to_vec();
    gap.extend_from_slice(b"\x01g");
    assert_eq!(recv(&mut binary_member).await, Message::binary(gap));
    assert!(metric(&a, "roomcast_gaps_total").await >= 2.0);
    assert!(metric(&a, "roomcast_broker_reconnects_total").await >= 1.0);
    // Resubscribed: delivery resumes.
    let r = request(
        &mut publisher,
        json!({"type":"publish","group":"g","data":"back","id":3}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    assert_eq!(recv_json(&mut member).await["data"], "back");
    a.stop().await;
    b.stop().await;
}

async fn nothing_acknowledged_is_lost_silently_when_the_broker_dies_under_traffic(kind: Kind) {
    let mut broker = BrokerProcess::start(kind);
    let a = node(&broker, "a").await;
    let b = node(&broker, "b").await;
    let (member, _) = connect(&a).await;
    let mut member = member;
    join(&mut member, "t").await;
    let (publisher, _) = connect(&b).await;
    let (mut tx, mut rx) = publisher.split();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Publish seq 0, 1, 2, ... with ids, a little at a time, until told.
    let sending = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let m = json!({"type":"publish","group":"t","data":i,"id":i}).to_string();
                tx.send(Message::text(m)).await.unwrap();
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            i
        })
    };
    let acked = tokio::spawn(async move {
        let mut acked = HashSet::new();
        let mut errors = 0;
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(3), rx.next()).await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("ack") => {
                        acked.insert(v["id"].as_u64().unwrap());
                    }
                    Some("error") => {
                        assert_eq!(v["code"], "broker_unavailable", "{v}");
                        errors += 1;
                    }
                    _ => panic!("{v}"),
                }
            }
        }
        (acked, errors)
    });
    // What the member receives, and where gaps fall.
    let receiving = tokio::spawn(async move {
        let mut got: Vec<u64> = Vec::new();
        let mut gaps_before: Vec<usize> = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(3), member.next()).await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("message") => got.push(v["data"].as_u64().unwrap()),
                    Some("gap") => gaps_before.push(got.len()),
                    _ => panic!("{v}"),
                }
            }
        }
        (got, gaps_before)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    broker.kill();
    wait_ready(&a, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.restart();
    wait_ready(&a, true).await;
    wait_ready(&b, true).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sending.await.unwrap();
    let (acked, errors) = acked.await.unwrap();
    let (got, gaps_before) = receiving.await.unwrap();
    assert!(errors > 0, "the outage refused some publications");
    assert!(!gaps_before.is_empty(), "the member was told of the gap");
    // In order, no duplicate.
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order or duplicated");
    // Every acknowledged publication arrived, or went missing where the
    // member was told of a gap: before the first delivery after it.
    let received: HashSet<u64> = got.iter().copied().collect();
    let first_after_gap = gaps_before.iter().filter_map(|&at| got.get(at).copied()).max();
    for seq in &acked {
        if !received.contains(seq) {
            let bound = first_after_gap.expect("deliveries after the gap");
            assert!(
                *seq < bound,
                "acknowledged {seq} never arrived, and no gap covers it"
            );
        }
    }
    // Delivery resumed after the outage.
    let acked_at_end = acked.iter().filter(|&&s| s + 100 >= sent).count();
    assert!(
        acked_at_end > 0 && got.last().is_some_and(|&l| l + 100 >= sent),
        "delivery resumed: sent {sent}, got {:?}",
        got.last()
    );
    a.stop().await;
    b.stop().await;
}

async fn a_hung_broker_stalls_no_session_and_is_noticed(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    let a = node(&broker, "a").await;
    let (mut member, _) = connect(&a).await;
    join(&mut member, "h").await;
    broker.pause(true);
    let paused = Instant::now();
    // A publication waits for the hung broker; the session keeps reading
    // and answering meanwhile.
    send_json(
        &mut member,
        json!({"type":"publish","group":"h","data":1,"id":"pub"}),
    )
    .await;
    let r = request(&mut member, json!({"type":"ping","id":"ping"})).await;
    assert_eq!(r, json!({"type":"pong","id":"ping"}));
    assert!(
        paused.elapsed() < Duration::from_millis(500),
        "the ping waited {:?}",
        paused.elapsed()
    );
    // The hung broker is noticed, and the publication refused, not acked.
    let r = recv_json(&mut member).await;
    assert_eq!(
        (r["id"].as_str(), r["code"].as_str()),
        (Some("pub"), Some("broker_unavailable")),
        "{r}"
    );
    wait_ready(&a, false).await;
    assert!(
        paused.elapsed() < Duration::from_secs(4),
        "noticed after {:?}",
        paused.elapsed()
    );
    broker.pause(false);
    wait_ready(&a, true).await;
    assert_eq!(recv_json(&mut member).await, json!({"type":"gap","group":"h"}));
    let r = request(
        &mut member,
        json!({"type":"publish","group":"h","data":2,"id":"again"}),
    )
    .await;
    // Echo is on: the member gets its own publication and the ack.
    let r2 = recv_json(&mut member).await;
    let mut both = [r, r2];
    both.sort_by_key(|v| v["type"].as_str().map(str::to_owned));
    assert_eq!(both[0], json!({"type":"ack","id":"again"}));
    assert_eq!(both[1]["data"], 2);
    a.stop().await;
}

async fn a_killed_node_takes_only_its_own_connections(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    let url = broker.url();
    let nodes: Vec<ServerProcess> = ["p", "q", "r"]
        .iter()
        .map(|n| ServerProcess::start(&["--broker", &url, "--node-name", n]))
        .collect();
    let mut clients = Vec::new();
    for n in &nodes {
        let deadline = Instant::now() + STEP;
        while http_get(n.addr, "/readyz", &[]).await.0 != 200 {
            assert!(Instant::now() < deadline, "node not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", n.addr))
            .await
            .unwrap();
        assert_eq!(recv_json(&mut ws).await["type"], "welcome");
        join(&mut ws, "k").await;
        clients.push(ws);
    }
    let mut nodes = nodes.into_iter();
    let (p, q, r) = (
        nodes.next().unwrap(),
        nodes.next().unwrap(),
        nodes.next().unwrap(),
    );
    let q_addr = q.addr;
    let _ = r.stop(); // SIGKILL
    let mut rc = clients.pop().unwrap();
    // Its client sees the connection drop, without a close handshake.
    let end = tokio::time::timeout(STEP, async {
        loop {
            match rc.next().await {
                Some(Ok(Message::Close(_))) => panic!("a killed node sends no Close"),
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok());
    // The others go on.
    let (status, _) = api_post(q_addr, "/api/publish", json!({"group":"k","data":"still"})).await;
    assert_eq!(status, 200);
    for ws in &mut clients {
        assert_eq!(recv_json(ws).await["data"], "still");
    }
    let _ = p.stop();
    let _ = q.stop();
}
