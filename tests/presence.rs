//! Presence and join/leave events: the `presence` and `presence_stats`
//! requests, `GET /api/groups/{group}/presence(_stats)`, `info` on join,
//! `joined`/`left` events with the grace and the member limit, and a node
//! killed with SIGKILL leaving presence within `presence_ttl`. Every test
//! body runs on the memory broker (one node) and on three nodes sharing a
//! real Redis and a real NATS (the `every!` macro below), through real
//! sockets.

mod common;

use std::time::{Duration, Instant};

use common::brokers::{BrokerProcess, Kind};
use common::*;
use futures_util::{SinkExt, StreamExt};
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
    presence_lists_every_node_s_members_with_user_and_info,
    presence_errors_limits_and_permissions,
    join_leave_events_are_per_user_after_the_grace,
    events_stop_above_the_member_limit,
    binary_clients_read_presence_with_the_json_requests,
);

/// Bodies that need separate processes on a shared broker.
macro_rules! clustered {
    ($($name:ident),* $(,)?) => {
        mod redis_process {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Kind::Redis).await })*
        }
        mod nats_process {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Kind::Nats).await })*
        }
    };
}

clustered!(
    a_killed_node_leaves_presence_within_the_ttl,
    a_killed_node_restarted_under_its_name_leaves_its_old_members,
);

/// Bodies about groups with history too, on every broker.
macro_rules! with_history {
    ($($name:ident),* $(,)?) => {
        mod memory_history {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Memory).await })*
        }
        mod redis_history {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Redis).await })*
        }
        mod nats_history {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Nats).await })*
        }
    };
}

with_history!(a_recovering_rejoin_is_neither_a_leave_nor_a_join);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Redis,
    Nats,
}

/// Nodes sharing one broker (one node for the memory broker).
struct Cluster {
    nodes: Vec<TestServer>,
    _broker: Option<BrokerProcess>,
}

impl Cluster {
    /// Node `i`, wrapping around (the memory broker has only one).
    fn node(&self, i: usize) -> &TestServer {
        &self.nodes[i % self.nodes.len()]
    }

    /// Node `i`'s name, as presence shows it.
    fn name(&self, i: usize) -> String {
        self.node(i).node.name.to_string()
    }
}

/// `room:` has presence and events, `quiet:` presence only, other groups
/// neither. Clients need a token (HS256, `JWT_SECRET`).
fn rules() -> Vec<GroupRule> {
    let rule = |prefix: &str, join_leave| GroupRule {
        prefix: prefix.into(),
        history_size: 0,
        history_ttl: Duration::from_secs(60),
        presence: true,
        join_leave,
    };
    vec![rule("room:", true), rule("quiet:", false)]
}

async fn cluster(backend: Backend, tweak: impl Fn(&mut roomcast::config::Config)) -> Cluster {
    let mut config = roomcast::config::Config {
        groups: rules(),
        jwt_secret: Some(JWT_SECRET.into()),
        join_leave_grace: Duration::from_secs(1),
        ..config()
    };
    tweak(&mut config);
    let kind = match backend {
        Backend::Memory => {
            return Cluster {
                nodes: vec![start(config).await],
                _broker: None,
            };
        }
        Backend::Redis => Kind::Redis,
        Backend::Nats => Kind::Nats,
    };
    let broker = BrokerProcess::start(kind);
    let mut nodes = Vec::new();
    for i in 0..3 {
        let server = start(roomcast::config::Config {
            broker: broker.url(),
            node_name: Some(format!("n{i}")),
            ..config.clone()
        })
        .await;
        wait_ready(server.addr).await;
        nodes.push(server);
    }
    Cluster {
        nodes,
        _broker: Some(broker),
    }
}

/// Wait until `/readyz` says ready (the broker is up).
async fn wait_ready(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + STEP;
    loop {
        let (status, body) = api_get(addr, "/readyz").await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "readyz still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connect with a token for `sub` (none: a connection without a user),
/// allowed `groups` (none: every group); returns the socket and its id.
async fn connect_as(server: &TestServer, sub: Option<&str>, groups: Option<&[&str]>) -> (Ws, String) {
    let mut claims = json!({"exp": unix_now() + 600});
    if let Some(s) = sub {
        claims["sub"] = json!(s);
    }
    if let Some(g) = groups {
        claims["groups"] = json!(g);
    }
    let url = format!("{}?token={}", server.url("/ws"), hs256_token(&claims));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    let welcome = recv_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let id = welcome["conn"].as_str().unwrap().to_owned();
    (ws, id)
}

/// Join `group` (with `info`) and expect the ack.
async fn join(ws: &mut Ws, group: &str, info: Option<Value>) {
    let mut req = json!({"type":"join","group":group,"id":"j"});
    if let Some(i) = info {
        req["info"] = i;
    }
    let r = request(ws, req).await;
    assert_eq!(r, json!({"type":"ack","id":"j"}), "join {group}");
}

/// Nothing arrives on `ws` for `wait`.
async fn quiet(ws: &mut Ws, wait: Duration) {
    let until = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("unexpected: {other:?}"),
        }
    }
}

/// The `presence` answer for `group`, asked on `ws`.
async fn presence(ws: &mut Ws, group: &str) -> Value {
    let r = request(ws, json!({"type":"presence","group":group,"id":"p"})).await;
    assert_eq!(r["type"], "presence", "{r}");
    r
}

/// Members of a presence answer by connection id.
fn by_conn(answer: &Value) -> std::collections::BTreeMap<String, Value> {
    answer["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members: {answer}"))
        .iter()
        .map(|m| (m["conn"].as_str().unwrap().to_owned(), m.clone()))
        .collect()
}

/// Ask `group`'s presence on `ws` until `pred` holds (a leave is written by
/// a task of the session that ended, a moment after the socket closed).
async fn presence_until(ws: &mut Ws, group: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let p = presence(ws, group).await;
        if pred(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "presence never {what}: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn presence_lists_every_node_s_members_with_user_and_info(backend: Backend) {
    let c = cluster(backend, |_| {}).await;
    let (mut ann1, ann1_id) = connect_as(c.node(0), Some("ann"), None).await;
    let (mut bob, bob_id) = connect_as(c.node(1), Some("bob"), None).await;
    let (mut ann2, ann2_id) = connect_as(c.node(2), Some("ann"), None).await;
    join(&mut ann1, "quiet:1", Some(json!({"name":"Ann","color":[1,2]}))).await;
    join(&mut bob, "quiet:1", None).await;
    join(&mut ann2, "quiet:1", Some(json!({}))).await;
    let p = presence(&mut bob, "quiet:1").await;
    assert_eq!(
        (&p["group"], &p["connections"], &p["users"], &p["truncated"]),
        (&json!("quiet:1"), &json!(3), &json!(2), &json!(false)),
        "{p}"
    );
    let members = by_conn(&p);
    assert_eq!(
        members[&ann1_id],
        json!({"conn": ann1_id, "user":"ann", "node": c.name(0), "info":{"name":"Ann","color":[1,2]}})
    );
    assert_eq!(
        members[&bob_id],
        json!({"conn": bob_id, "user":"bob", "node": c.name(1)})
    );
    assert_eq!(members[&ann2_id]["info"], json!({}));
    assert_eq!(members.len(), 3);
    // The same from another node, and without an id.
    send_json(&mut ann2, json!({"type":"presence_stats","group":"quiet:1"})).await;
    assert_eq!(
        recv_json(&mut ann2).await,
        json!({"type":"presence_stats","group":"quiet:1","connections":3,"users":2})
    );
    // The API, on a node with one member of the three.
    let (status, body) = api_get(c.node(1).addr, "/api/groups/quiet:1/presence").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(by_conn(&body), members, "{body}");
    assert_eq!(body["connections"], 3);
    let (status, body) = api_get(c.node(0).addr, "/api/groups/quiet:1/presence_stats").await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"type":"presence_stats","group":"quiet:1","connections":3,"users":2})
        )
    );
    // /api/groups and /api/groups/{group} count the whole cluster where
    // presence makes it possible.
    let (_, list) = api_get(c.node(0).addr, "/api/groups").await;
    assert_eq!(list["groups"], json!([{"name":"quiet:1","members":3}]), "{list}");
    let (status, info) = api_get(c.node(0).addr, "/api/groups/quiet:1").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!((&info["members"], &info["truncated"]), (&json!(3), &json!(false)));
    let mut conns: Vec<&str> = info["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    conns.sort_unstable();
    let mut want = vec![ann1_id.as_str(), bob_id.as_str(), ann2_id.as_str()];
    want.sort_unstable();
    assert_eq!(conns, want);
    // A connection that goes leaves presence; a `leave` too.
    drop(ann1);
    let p = presence_until(&mut bob, "quiet:1", "lost ann's first connection", |p| {
        p["connections"] == 2
    })
    .await;
    assert_eq!(p["users"], 2, "ann is still there: {p}");
    let r = request(&mut ann2, json!({"type":"leave","group":"quiet:1","id":"l"})).await;
    assert_eq!(r["type"], "ack");
    let p = presence(&mut bob, "quiet:1").await;
    assert_eq!((&p["connections"], &p["users"]), (&json!(1), &json!(1)), "{p}");
    assert_eq!(by_conn(&p).keys().collect::<Vec<_>>(), [&bob_id]);
}

async fn presence_errors_limits_and_permissions(backend: Backend) {
    let c = cluster(backend, |c| {
        c.max_presence_info_size = 64;
        c.max_presence_members = 2;
    })
    .await;
    let (mut ann, _) = connect_as(c.node(0), Some("ann"), Some(&["room:*", "quiet:*", "plain"])).await;
    // info must be an object, and small.
    for (info, what) in [
        (json!("Ann"), "must be a JSON object"),
        (json!([1]), "must be a JSON object"),
        (json!({"bio": "x".repeat(80)}), "longer than 64 bytes"),
    ] {
        let r = request(
            &mut ann,
            json!({"type":"join","group":"quiet:e","info":info,"id":7}),
        )
        .await;
        assert_eq!(
            (&r["type"], &r["code"], &r["id"]),
            (&json!("error"), &json!("bad_request"), &json!(7)),
            "{r}"
        );
        assert!(r["message"].as_str().unwrap().contains(what), "{r}");
    }
    // Refused joins left nothing behind.
    let (mut bob, _) = connect_as(c.node(1), Some("bob"), None).await;
    let p = presence(&mut bob, "quiet:e").await;
    assert_eq!((&p["connections"], &p["members"]), (&json!(0), &json!([])), "{p}");
    // A group without presence.
    join(&mut ann, "plain", None).await;
    for kind in ["presence", "presence_stats"] {
        let r = request(&mut ann, json!({"type":kind,"group":"plain","id":1})).await;
        assert_eq!((&r["code"], &r["id"]), (&json!("no_presence"), &json!(1)), "{r}");
    }
    for path in ["/api/groups/plain/presence", "/api/groups/plain/presence_stats"] {
        let (status, body) = api_get(c.node(2).addr, path).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "no_presence", "{body}");
    }
    // Reading presence needs the right to join.
    let r = request(&mut ann, json!({"type":"presence","group":"other:1","id":2})).await;
    assert_eq!(r["code"], "not_allowed", "{r}");
    let r = request(
        &mut ann,
        json!({"type":"presence_stats","group":"other:1","id":3}),
    )
    .await;
    assert_eq!(r["code"], "not_allowed", "{r}");
    // A big group's answer is cut at max_presence_members; counts stay whole.
    let mut members = Vec::new();
    for i in 0..3 {
        let (mut ws, _) = connect_as(c.node(i), Some(&format!("u{i}")), None).await;
        join(&mut ws, "quiet:big", None).await;
        members.push(ws);
    }
    let p = presence(&mut ann, "quiet:big").await;
    assert_eq!(
        (&p["connections"], &p["users"], &p["truncated"]),
        (&json!(3), &json!(3), &json!(true)),
        "{p}"
    );
    assert_eq!(p["members"].as_array().unwrap().len(), 2);
    let (_, info) = api_get(c.node(0).addr, "/api/groups/quiet:big").await;
    assert_eq!(
        (&info["members"], &info["truncated"]),
        (&json!(3), &json!(true)),
        "{info}"
    );
}

/// The next message on `ws`, which must be a presence event.
async fn event(ws: &mut Ws) -> Value {
    let e = recv_json(ws).await;
    assert!(e["type"] == "joined" || e["type"] == "left", "{e}");
    assert!(e.get("reason").is_none(), "events have no reason: {e}");
    e
}

async fn join_leave_events_are_per_user_after_the_grace(backend: Backend) {
    let c = cluster(backend, |_| {}).await;
    let (mut watcher, watcher_id) = connect_as(c.node(0), Some("watcher"), None).await;
    join(&mut watcher, "room:1", None).await;
    assert_eq!(
        event(&mut watcher).await,
        json!({"type":"joined","group":"room:1","conn":watcher_id,"user":"watcher"}),
        "a member gets its own joined, after its ack"
    );
    // A user's first connection: joined, with its info, on every node.
    let (mut ann1, ann1_id) = connect_as(c.node(1), Some("ann"), None).await;
    join(&mut ann1, "room:1", Some(json!({"name":"Ann"}))).await;
    let joined = json!({"type":"joined","group":"room:1","conn":ann1_id,"user":"ann","info":{"name":"Ann"}});
    assert_eq!(event(&mut watcher).await, joined);
    assert_eq!(event(&mut ann1).await, joined);
    // Its second connection, on another node: nothing.
    let (mut ann2, ann2_id) = connect_as(c.node(2), Some("ann"), None).await;
    join(&mut ann2, "room:1", None).await;
    // One connection leaving while another stays: nothing.
    drop(ann1);
    quiet(&mut watcher, Duration::from_millis(1500)).await;
    // The last one leaving: left, after the grace.
    drop(ann2);
    assert_eq!(
        event(&mut watcher).await,
        json!({"type":"left","group":"room:1","conn":ann2_id,"user":"ann"})
    );
    // A reconnect within the grace, to another node: neither left nor joined.
    let (mut ann3, _) = connect_as(c.node(1), Some("ann"), None).await;
    join(&mut ann3, "room:1", None).await;
    assert_eq!(event(&mut watcher).await["type"], "joined");
    drop(ann3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut ann4, _) = connect_as(c.node(2), Some("ann"), None).await;
    join(&mut ann4, "room:1", None).await;
    quiet(&mut watcher, Duration::from_millis(2500)).await;
    let p = presence(&mut ann4, "room:1").await;
    assert_eq!((&p["connections"], &p["users"]), (&json!(2), &json!(2)), "{p}");
    // A `leave` request counts as leaving; a connection without a user is
    // its own member, and leaves at once (no grace).
    let r = request(&mut ann4, json!({"type":"leave","group":"room:1","id":"l"})).await;
    assert_eq!(r["type"], "ack");
    assert_eq!(event(&mut watcher).await["type"], "left");
    let (mut anon, anon_id) = connect_as(c.node(1), None, None).await;
    join(&mut anon, "room:1", None).await;
    assert_eq!(
        event(&mut watcher).await,
        json!({"type":"joined","group":"room:1","conn":anon_id})
    );
    let at = Instant::now();
    drop(anon);
    assert_eq!(
        event(&mut watcher).await,
        json!({"type":"left","group":"room:1","conn":anon_id})
    );
    assert!(
        at.elapsed() < Duration::from_secs(5),
        "no grace: {:?}",
        at.elapsed()
    );
    // Counted where they were sent, once each.
    let mut sent = [0u64; 2];
    for i in 0..c.nodes.len() {
        let metrics = http_get(c.node(i).addr, "/metrics", &[]).await.1;
        for (n, kind) in ["joined", "left"].iter().enumerate() {
            let name = format!("roomcast_presence_events_total{{kind=\"{kind}\"}} ");
            sent[n] += metrics
                .lines()
                .find_map(|l| l.strip_prefix(&name)?.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name}"));
        }
    }
    // joined: the watcher, ann, ann after her left, anon; left: ann (after
    // the grace), ann (her leave request), anon.
    assert_eq!(sent, [4, 3]);
    // Groups with presence but no events stay silent.
    let (mut bob, _) = connect_as(c.node(2), Some("bob"), None).await;
    join(&mut watcher, "quiet:1", None).await;
    join(&mut bob, "quiet:1", None).await;
    drop(bob);
    quiet(&mut watcher, Duration::from_millis(1500)).await;
}

async fn events_stop_above_the_member_limit(backend: Backend) {
    let c = cluster(backend, |c| c.join_leave_max_members = 3).await;
    let (mut watcher, _) = connect_as(c.node(0), Some("watcher"), None).await;
    join(&mut watcher, "room:big", None).await;
    assert_eq!(event(&mut watcher).await["type"], "joined");
    let mut members = Vec::new();
    for i in 1..=2 {
        let (mut ws, id) = connect_as(c.node(i), Some(&format!("u{i}")), None).await;
        join(&mut ws, "room:big", None).await;
        let e = event(&mut watcher).await;
        assert_eq!((&e["type"], &e["conn"]), (&json!("joined"), &json!(id)), "{e}");
        members.push(ws);
    }
    // A fourth connection makes the group larger than the limit: no
    // event for its join, nor for its leave.
    let (mut fourth, _) = connect_as(c.node(1), Some("u4"), None).await;
    join(&mut fourth, "room:big", None).await;
    drop(fourth);
    quiet(&mut watcher, Duration::from_millis(2500)).await;
    let p = presence(&mut watcher, "room:big").await;
    assert_eq!(p["connections"], 3, "{p}");
    // Back at the limit: events again.
    drop(members.pop());
    let e = event(&mut watcher).await;
    assert_eq!((&e["type"], &e["user"]), (&json!("left"), &json!("u2")), "{e}");
}

async fn a_killed_node_leaves_presence_within_the_ttl(kind: Kind) {
    killed_node(kind, false).await;
}

async fn a_killed_node_restarted_under_its_name_leaves_its_old_members(kind: Kind) {
    killed_node(kind, true).await;
}

/// A node process is killed with SIGKILL (and, with `restart`, started
/// again at once under the same name): its member leaves presence within
/// the TTL, and the members elsewhere get its `left` event once.
async fn killed_node(kind: Kind, restart: bool) {
    let broker = BrokerProcess::start(kind);
    let url = broker.url();
    let ttl = Duration::from_secs(3);
    let args = [
        "--broker",
        &url,
        "--node-name",
        "doomed",
        "--presence",
        "--join-leave",
        "--presence-ttl",
        "3s",
        "--join-leave-grace",
        "1s",
    ];
    let doomed = ServerProcess::start(&args);
    let survivor = start(roomcast::config::Config {
        broker: url.clone(),
        node_name: Some("survivor".into()),
        presence: true,
        join_leave: true,
        presence_ttl: ttl,
        join_leave_grace: Duration::from_secs(1),
        ..config()
    })
    .await;
    wait_ready(doomed.addr).await;
    wait_ready(survivor.addr).await;
    let (mut stays, stays_id) = connect(&survivor).await;
    let r = request(&mut stays, json!({"type":"join","group":"lobby","id":1})).await;
    assert_eq!(r["type"], "ack", "{r}");
    assert_eq!(event(&mut stays).await["conn"], stays_id);
    let (mut gone, gone_id) = {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", doomed.addr))
            .await
            .expect("connect");
        let welcome = recv_json(&mut ws).await;
        (ws, welcome["conn"].as_str().unwrap().to_owned())
    };
    assert!(gone_id.starts_with("doomed."), "{gone_id}");
    let r = request(&mut gone, json!({"type":"join","group":"lobby","id":1})).await;
    assert_eq!(r["type"], "ack", "{r}");
    assert_eq!(event(&mut stays).await["conn"], gone_id);
    let p = presence(&mut stays, "lobby").await;
    let mut ids: Vec<String> = by_conn(&p).into_keys().collect();
    ids.sort();
    let mut want = vec![gone_id.clone(), stays_id.clone()];
    want.sort();
    assert_eq!(ids, want, "{p}");
    let killed = Instant::now();
    doomed.stop();
    let again = restart.then(|| ServerProcess::start(&args));
    // Its left event, within the TTL (plus generous slack for a loaded
    // machine); by then it is out of presence.
    let left = tokio::time::timeout(ttl + STEP, event(&mut stays))
        .await
        .expect("a left event for the dead node's member");
    assert_eq!(left, json!({"type":"left","group":"lobby","conn":gone_id}));
    let p = presence(&mut stays, "lobby").await;
    assert_eq!(
        by_conn(&p).into_keys().collect::<Vec<_>>(),
        [stays_id.as_str()],
        "{p}"
    );
    eprintln!("left after {:?} (TTL {ttl:?})", killed.elapsed());
    if !restart {
        // The survivor, the only other node, reaped it.
        let metrics = http_get(survivor.addr, "/metrics", &[]).await.1;
        assert!(
            metrics.contains("roomcast_presence_reaped_total 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("roomcast_presence_events_total{kind=\"left\"} 1\n"),
            "{metrics}"
        );
    }
    // Once only, whoever reaped it.
    quiet(&mut stays, ttl).await;
    drop(gone);
    if let Some(p) = again {
        p.stop();
    }
    survivor.stop().await;
}

async fn binary_clients_read_presence_with_the_json_requests(backend: Backend) {
    let c = cluster(backend, |_| {}).await;
    let (mut watcher, _) = connect_as(c.node(0), Some("watcher"), None).await;
    join(&mut watcher, "room:b", None).await;
    assert_eq!(event(&mut watcher).await["type"], "joined");
    // A binary join (type 1): no ack, no info; then the JSON requests on
    // the same connection.
    let (mut bin, bin_id) = connect_as(c.node(1), Some("bin"), None).await;
    let mut frame = 1u32.to_le_bytes().to_vec();
    frame.extend_from_slice(b"room:b");
    bin.send(Message::binary(frame)).await.unwrap();
    // Its own joined event comes as JSON text, whatever it joined with.
    let e = event(&mut bin).await;
    assert_eq!(
        e,
        json!({"type":"joined","group":"room:b","conn":bin_id,"user":"bin"})
    );
    assert_eq!(event(&mut watcher).await, e);
    let p = presence(&mut bin, "room:b").await;
    assert_eq!(
        by_conn(&p)[&bin_id],
        json!({"conn": bin_id, "user": "bin", "node": c.name(1)})
    );
    let r = request(&mut bin, json!({"type":"presence_stats","group":"room:b","id":9})).await;
    assert_eq!(
        r,
        json!({"type":"presence_stats","id":9,"group":"room:b","connections":2,"users":2})
    );
}

async fn a_recovering_rejoin_is_neither_a_leave_nor_a_join(backend: Backend) {
    let c = cluster(backend, |c| {
        c.groups.push(GroupRule {
            prefix: "hist:".into(),
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            presence: true,
            join_leave: true,
        })
    })
    .await;
    let (mut watcher, _) = connect_as(c.node(0), Some("watcher"), None).await;
    let ack = request(&mut watcher, json!({"type":"join","group":"hist:1","id":1})).await;
    assert_eq!(ack["offset"], 0, "{ack}");
    assert_eq!(event(&mut watcher).await["type"], "joined");
    let (mut ann, ann_id) = connect_as(c.node(1), Some("ann"), None).await;
    let ack = request(
        &mut ann,
        json!({"type":"join","group":"hist:1","id":1,"info":{"v":1}}),
    )
    .await;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    assert_eq!(event(&mut watcher).await["conn"], ann_id);
    assert_eq!(event(&mut ann).await["conn"], ann_id);
    // Joining a group with history again (to recover) leaves and joins it
    // on this node; presence sees the same member, with its new info.
    let ack = request(
        &mut ann,
        json!({"type":"join","group":"hist:1","id":2,"info":{"v":2},"recover":{"offset":0,"epoch":epoch}}),
    )
    .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    quiet(&mut watcher, Duration::from_millis(1500)).await;
    let p = presence(&mut watcher, "hist:1").await;
    assert_eq!(p["connections"], 2, "{p}");
    assert_eq!(by_conn(&p)[&ann_id]["info"], json!({"v":2}), "{p}");
}
