//! The runnable examples of README.md and docs/, run as written against a
//! real server, so the documentation stays true. Examples are read from the
//! documents themselves: a WebSocket transcript (`>` sent, `<` expected,
//! compared as exact text), a `$ curl ...` line with the output shown under
//! it (status line and every header shown, then the exact body), or a
//! `roomcast client ...` command.
//!
//! Not run: examples that need another machine (`curl http://192.0.2.2...`),
//! a browser, websocat, openssl or Python, and outputs that are counters of
//! a busier server (`/stats`, `/metrics`).

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use roomcast::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const README: &str = include_str!("../README.md");
const AUTH: &str = include_str!("../docs/auth.md");
const HTTP_API: &str = include_str!("../docs/http-api.md");

/// The address every example in the documents talks to.
const DOC_ADDR: &str = "127.0.0.1:8080";

/// Every fenced block of `doc`, as its lines (indentation of list items
/// removed).
fn blocks(doc: &str) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            match current.take() {
                Some(b) => all.push(b),
                None => current = Some(Vec::new()),
            }
        } else if let Some(b) = &mut current {
            b.push(line.trim_start().to_owned());
        }
    }
    all
}

/// The one fenced block of `doc` that contains `marker`.
fn block(doc: &str, marker: &str) -> Vec<String> {
    let mut found: Vec<_> = blocks(doc)
        .into_iter()
        .filter(|b| b.iter().any(|l| l.contains(marker)))
        .collect();
    assert_eq!(found.len(), 1, "blocks containing {marker:?}");
    found.pop().unwrap()
}

/// Replace each `(from, to)` in `s`.
fn subst(s: &str, vars: &[(&str, &str)]) -> String {
    vars.iter()
        .fold(s.to_owned(), |s, (from, to)| s.replace(from, to))
}

/// Play a transcript: send the `> ` lines, and expect the `< ` lines as
/// the exact text of the next messages.
async fn play(ws: &mut Ws, lines: &[String], vars: &[(&str, &str)]) {
    for line in lines {
        let line = subst(line, vars);
        if let Some(out) = line.strip_prefix("> ") {
            send_text(ws, out).await;
        } else if let Some(expected) = line.strip_prefix("< ") {
            match recv(ws).await {
                Message::Text(t) => assert_eq!(t.as_str(), expected, "after {lines:#?}"),
                other => panic!("expected {expected}, got {other:?}"),
            }
        }
    }
}

/// Split a shell command line into words: single and double quotes,
/// `$NAME` expanded from `vars` (not inside single quotes), `#` comments.
fn shell_words(line: &str, vars: &[(&str, &str)]) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    let expand = |chars: &mut std::iter::Peekable<std::str::Chars>, out: &mut String| {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        let value = vars
            .iter()
            .find(|(k, _)| *k == name)
            .unwrap_or_else(|| panic!("${name} in {line:?} has no value"));
        out.push_str(value.1);
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '#' if word.is_none() => break,
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let mut w = word.take().unwrap_or_default();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '$' => expand(&mut chars, &mut w),
                        c => w.push(c),
                    }
                }
                word = Some(w);
            }
            '$' => {
                let mut w = word.take().unwrap_or_default();
                expand(&mut chars, &mut w);
                word = Some(w);
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// A `$ curl` example: the command line (continuations joined) and the
/// output shown under it.
struct CurlExample {
    command: String,
    output: Vec<String>,
}

/// The one `$ curl` example in `doc` whose command contains `marker`.
fn curl_example(doc: &str, marker: &str) -> CurlExample {
    let mut found = Vec::new();
    for b in blocks(doc) {
        let mut i = 0;
        while i < b.len() {
            let Some(first) = b[i].strip_prefix("$ curl ") else {
                i += 1;
                continue;
            };
            let mut command = format!("curl {first}");
            while command.ends_with('\\') {
                command.pop();
                i += 1;
                command.push(' ');
                command.push_str(&b[i]);
            }
            i += 1;
            let mut output = Vec::new();
            while i < b.len() && !b[i].starts_with("$ ") {
                output.push(b[i].clone());
                i += 1;
            }
            while output.last().is_some_and(|l| l.is_empty()) {
                output.pop();
            }
            if command.contains(marker) {
                found.push(CurlExample { command, output });
            }
        }
    }
    assert_eq!(found.len(), 1, "curl examples containing {marker:?}");
    found.pop().unwrap()
}

/// A response as `curl -i` shows it.
struct Reply {
    status_line: String,
    headers: Vec<String>,
    body: String,
}

/// Run a `curl` command line against `addr` (the URL's host is ignored)
/// over a plain TCP connection.
async fn run_curl(addr: SocketAddr, command: &str, vars: &[(&str, &str)]) -> Reply {
    let words = shell_words(command, vars);
    assert_eq!(words[0], "curl");
    let (mut method, mut url, mut headers, mut body) = (None, None, Vec::new(), None);
    let mut args = words[1..].iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-s" | "-i" | "-si" => {}
            "-X" => method = args.next().cloned(),
            "-H" => headers.push(args.next().unwrap().clone()),
            "-d" | "--data-binary" => body = args.next().cloned(),
            u if u.starts_with("http://") => url = Some(u.to_owned()),
            other => panic!("curl option {other:?} not supported by this test"),
        }
    }
    let url = url.expect("a URL");
    let target = &url["http://".len()..];
    let path = &target[target.find('/').unwrap()..];
    let body = body.unwrap_or_default();
    let method = method.unwrap_or_else(|| if body.is_empty() { "GET" } else { "POST" }.into());
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {DOC_ADDR}\r\nUser-Agent: curl\r\n");
    for h in &headers {
        req.push_str(&format!("{h}\r\n"));
    }
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("connection:"))
    {
        req.push_str("Connection: close\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(STEP, tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n").map(str::to_owned);
    let status_line = lines.next().unwrap();
    let headers: Vec<String> = lines.collect();
    let mut body = buf[head_end + 4..].to_vec();
    let length = headers.iter().find_map(|h| {
        h.to_ascii_lowercase()
            .strip_prefix("content-length: ")
            .map(|v| v.parse::<usize>().unwrap())
    });
    match length {
        Some(len) => {
            while body.len() < len {
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(STEP, tcp.read(&mut chunk))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "connection closed inside the body");
                body.extend_from_slice(&chunk[..n]);
            }
        }
        None => {
            tokio::time::timeout(STEP, tcp.read_to_end(&mut body))
                .await
                .unwrap()
                .unwrap();
        }
    }
    Reply {
        status_line,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

/// Run a `$ curl` example of `doc` and check that the server answers what
/// the document shows.
async fn check_curl(doc: &str, marker: &str, addr: SocketAddr, vars: &[(&str, &str)]) {
    let ex = curl_example(doc, marker);
    let reply = run_curl(addr, &ex.command, vars).await;
    let context = format!(
        "{}\ngot: {}\n{}\n\n{}",
        ex.command,
        reply.status_line,
        reply.headers.join("\n"),
        reply.body
    );
    let shown_body = if ex.output.first().is_some_and(|l| l.starts_with("HTTP/1.1 ")) {
        assert_eq!(reply.status_line, ex.output[0], "{context}");
        let blank = ex
            .output
            .iter()
            .position(String::is_empty)
            .unwrap_or(ex.output.len());
        for h in &ex.output[1..blank] {
            assert!(reply.headers.contains(h), "header {h:?} missing: {context}");
        }
        ex.output[(blank + 1).min(ex.output.len())..].join("\n")
    } else {
        // `curl -s` shows no status: an error body must come with an
        // error status, anything else with a success.
        let shown = ex.output.join("\n");
        let error = shown.starts_with(r#"{"error""#);
        let success = reply.status_line.starts_with("HTTP/1.1 2");
        assert_eq!(success, !error, "{context}");
        shown
    };
    assert_eq!(reply.body.trim_end_matches('\n'), shown_body, "{context}");
}

/// Run a `roomcast client` command of a document against `server`, with
/// `stdin` as its input; returns its stdout lines (one JSON object each).
async fn run_client(command: &str, server: &TestServer, vars: &[(&str, &str)], stdin: &str) -> Vec<Value> {
    let command = command.replace(DOC_ADDR, &server.addr.to_string());
    let words = shell_words(&command, vars);
    let at = words
        .iter()
        .position(|w| w == "roomcast")
        .expect("a roomcast command");
    assert_eq!(words[at + 1], "client");
    let args = words[at + 1..].to_vec();
    let stdin = stdin.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // stdin stays open until the client exits: --count ends it.
        let mut input = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut input, stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        drop(input);
        out
    });
    let out = tokio::time::timeout(STEP, out).await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "{command}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

// ---- README.md ----

#[tokio::test]
async fn readme_quick_start_transcript() {
    let server = start(config()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/ws")).await.unwrap();
    play(
        &mut ws,
        &block(README, r#"> {"type":"join","group":"lobby""#),
        &[],
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn readme_client_example() {
    let server = start(config()).await;
    let line = block(README, "| roomcast client")
        .into_iter()
        .find(|l| l.contains("| roomcast client"))
        .unwrap();
    let (echo, command) = line.split_once('|').unwrap();
    let input = shell_words(echo, &[])[1].clone() + "\n";
    let printed = run_client(command, &server, &[], &input).await;
    assert_eq!(
        printed,
        [json!({"type":"message","group":"lobby","from":"1","data":{"text":"hi"}})]
    );
    server.stop().await;
}

// ---- docs/auth.md ----

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes";

fn auth_config() -> Config {
    Config {
        jwt_secret: Some(SECRET.into()),
        ..config()
    }
}

/// The worked example's token: the payload shown in auth.md, valid for an
/// hour from now (like mint_token.py's).
fn doc_token(sub: &str) -> String {
    let payload = block(AUTH, r#"{"sub":"ann","exp""#);
    let mut claims: Value = serde_json::from_str(&payload.join("\n")).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    claims["exp"] = json!(now + 3600);
    claims["sub"] = json!(sub);
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The transcript "Once connected, the example token behaves like this",
/// through each of the three places a token can travel.
#[tokio::test]
async fn auth_worked_example_in_each_place() {
    let token = doc_token("ann");
    let transcript = block(AUTH, r#""group":"admin""#);
    for place in ["query", "Bearer", "bearer", "subprotocol"] {
        // A fresh server each time, so the connection is "1" as shown.
        let server = start(auth_config()).await;
        let mut req = match place {
            "query" => server.url(&format!("/ws?token={token}")),
            _ => server.url("/ws"),
        }
        .into_client_request()
        .unwrap();
        match place {
            "Bearer" | "bearer" => {
                let v = format!("{place} {token}").parse().unwrap();
                req.headers_mut().insert("Authorization", v);
            }
            "subprotocol" => {
                let v = format!("roomcast, bearer.{token}").parse().unwrap();
                req.headers_mut().insert("Sec-WebSocket-Protocol", v);
            }
            _ => {}
        }
        let (mut ws, response) = tokio_tungstenite::connect_async(req)
            .await
            .unwrap_or_else(|e| panic!("{place}: {e}"));
        if place == "subprotocol" {
            assert_eq!(response.headers()["sec-websocket-protocol"], "roomcast");
        }
        play(&mut ws, &transcript, &[]).await;
        server.stop().await;
    }
}

/// `roomcast client "ws://127.0.0.1:8080/ws?token=$TOKEN" --join ...`: the
/// first line typed is published, and comes back.
#[tokio::test]
async fn auth_client_example_publishes_what_is_typed() {
    let server = start(auth_config()).await;
    let token = doc_token("ann");
    let command = block(AUTH, "roomcast client \"ws://")
        .into_iter()
        .find(|l| l.starts_with("roomcast client"))
        .unwrap();
    let command = format!("{command} --count 1");
    let printed = run_client(&command, &server, &[("TOKEN", &token)], "hello\n").await;
    assert_eq!(printed.len(), 1, "{printed:?}");
    assert_eq!(printed[0]["type"], "message", "{printed:?}");
    assert_eq!(printed[0]["data"], "hello", "{printed:?}");
    assert_eq!(printed[0]["user"], "ann", "{printed:?}");
    server.stop().await;
}

/// "4. Without a valid token", and the same curl in http-api.md.
#[tokio::test]
async fn auth_refusal_curl_examples() {
    let server = start(auth_config()).await;
    check_curl(AUTH, "Sec-WebSocket-Key", server.addr, &[]).await;
    check_curl(HTTP_API, "Sec-WebSocket-Key", server.addr, &[]).await;
    server.stop().await;
}

/// The `user` field examples and the refresh replies shown in auth.md.
#[tokio::test]
async fn auth_user_field_and_refresh_examples() {
    let server = start(auth_config()).await;
    let token = doc_token("ann");
    let url = server.url(&format!("/ws?token={token}"));
    let (mut ann, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut other, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(recv_json(&mut ann).await["conn"], "1");
    assert_eq!(recv_json(&mut other).await["conn"], "2");
    request(&mut other, json!({"type":"join","group":"chat:announce","id":1})).await;
    let ack = request(
        &mut ann,
        json!({"type":"publish","group":"chat:announce","data":{"text":"hello"},"id":2}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    send_json(&mut ann, json!({"type":"send","to":"2","data":"psst"})).await;
    play(&mut other, &block(AUTH, r#""user":"ann","data":"psst""#), &[]).await;

    let bob = doc_token("bob");
    let refresh = block(AUTH, r#""token":"garbage""#);
    play(&mut ann, &refresh, &[("<token for bob>", &bob)]).await;
    drop((ann, other));
    server.stop().await;
}

// ---- docs/http-api.md ----

/// The curl examples of http-api.md, on a server in the state they show:
/// connection 1 in `café room` and `lobby`, connection 2 in `lobby`.
#[tokio::test]
async fn http_api_curl_examples() {
    let server = start(config()).await;
    let addr = server.addr;
    let (mut one, _) = connect(&server).await;
    let (mut two, _) = connect(&server).await;
    for (first, group) in [(true, "café room"), (true, "lobby"), (false, "lobby")] {
        let ws = if first { &mut one } else { &mut two };
        let ack = request(ws, json!({"type":"join","group":group,"id":1})).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    check_curl(HTTP_API, "curl -i http://127.0.0.1:8080/ws", addr, &[]).await;
    check_curl(HTTP_API, "/healthz", addr, &[]).await;
    check_curl(HTTP_API, "/readyz", addr, &[]).await;
    check_curl(HTTP_API, "'http://127.0.0.1:8080/api/groups'", addr, &[]).await;
    check_curl(HTTP_API, "/api/groups?limit=1'", addr, &[]).await;
    check_curl(HTTP_API, "limit=1&after=caf%C3%A9%20room", addr, &[]).await;
    check_curl(HTTP_API, "/api/groups/caf%C3%A9%20room", addr, &[]).await;
    check_curl(HTTP_API, "/api/groups/nobody", addr, &[]).await;

    check_curl(HTTP_API, "deploy finished", addr, &[]).await;
    check_curl(HTTP_API, "--data-binary 'raw bytes'", addr, &[]).await;
    // What the two clients printed (the binary delivery, in base64).
    let printed = block(HTTP_API, r#"{"type":"message","group":"lobby","binary""#);
    let shown_binary: Value = serde_json::from_str(&printed[1]).unwrap();
    for ws in [&mut one, &mut two] {
        play(ws, &[format!("< {}", printed[0])], &[]).await;
        match recv(ws).await {
            Message::Binary(b) => {
                use base64::Engine as _;
                let shown = base64::engine::general_purpose::STANDARD
                    .decode(shown_binary["binary"].as_str().unwrap())
                    .unwrap();
                assert!(b.ends_with(&shown), "{b:?}");
            }
            other => panic!("expected the binary publication, got {other:?}"),
        }
    }
    check_curl(HTTP_API, "maintenance at 22:00", addr, &[]).await;
    for ws in [&mut one, &mut two] {
        assert_eq!(
            recv_json(ws).await,
            json!({"type":"message","data":"maintenance at 22:00"})
        );
    }
    check_curl(HTTP_API, r#"{"to":"2","data":{"private":true}}"#, addr, &[]).await;
    assert_eq!(
        recv_json(&mut two).await,
        json!({"type":"message","data":{"private":true}})
    );
    check_curl(HTTP_API, r#""to":"999""#, addr, &[]).await;
    check_curl(HTTP_API, r#""code":1001"#, addr, &[]).await;
    check_curl(HTTP_API, "banned by a moderator", addr, &[]).await;
    let (_, frame) = recv_until_close(&mut one).await;
    let frame = frame.expect("a close frame");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (4403, "banned by a moderator")
    );
    drop(two);
    server.stop().await;
}

/// http-api.md's presence examples: `room:` has presence, on a node named
/// `web-1`; Ann joins with info, then a second connection.
#[tokio::test]
async fn http_api_presence_examples() {
    let server = start(Config {
        node_name: Some("web-1".into()),
        groups: vec![roomcast::groups::GroupRule {
            prefix: "room:".into(),
            history_size: 0,
            history_ttl: std::time::Duration::from_secs(60),
            presence: true,
            join_leave: false,
        }],
        ..config()
    })
    .await;
    let (mut ann, _) = connect(&server).await;
    let (mut other, _) = connect(&server).await;
    let r = request(
        &mut ann,
        json!({"type":"join","group":"room:1","info":{"name":"Ann"},"id":1}),
    )
    .await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = request(&mut other, json!({"type":"join","group":"room:1","id":1})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let addr = server.addr;
    check_curl(HTTP_API, "/api/groups/room:1/presence'", addr, &[]).await;
    check_curl(HTTP_API, "/api/groups/room:1/presence_stats'", addr, &[]).await;
    check_curl(HTTP_API, "/api/groups/lobby/presence'", addr, &[]).await;
    server.stop().await;
}

/// The access-control examples with a key configured (run from loopback;
/// the one from another address cannot be).
#[tokio::test]
async fn http_api_key_examples() {
    let key = "0123456789abcdef-doc-key";
    let server = start(Config {
        api_key: Some(key.into()),
        ..config()
    })
    .await;
    let addr = server.addr;
    check_curl(HTTP_API, "# key configured, none sent", addr, &[]).await;
    check_curl(HTTP_API, "Bearer wrong", addr, &[]).await;
    check_curl(
        HTTP_API,
        "Bearer $ROOMCAST_API_KEY",
        addr,
        &[("ROOMCAST_API_KEY", key)],
    )
    .await;
    server.stop().await;
}

/// The shell-word splitter handles what the documents use.
#[test]
fn shell_words_of_doc_commands() {
    assert_eq!(
        shell_words(
            r#"curl -H "Authorization: Bearer $K" 'a b'c # comment"#,
            &[("K", "v")]
        ),
        ["curl", "-H", "Authorization: Bearer v", "a bc"]
    );
}

// ---- statements of docs/protocol.md, http-api.md, configuration.md ----

/// protocol.md, "Subprotocols": which offered protocol the `101` selects.
#[tokio::test]
async fn subprotocol_selection_is_as_documented() {
    let token = doc_token("ann");
    async fn selected(server: &TestServer, query: &str, offer: &str, auth: Option<&str>) -> Option<String> {
        let mut req = server.url(&format!("/ws{query}")).into_client_request().unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", offer.parse().unwrap());
        if let Some(a) = auth {
            req.headers_mut().insert("Authorization", a.parse().unwrap());
        }
        // tungstenite refuses a 101 that selects nothing when protocols
        // were offered, so read the raw head instead.
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut head = format!("GET {} HTTP/1.1\r\n", req.uri());
        head = head.replace(&format!("ws://{}", server.addr), "");
        head.push_str(&format!("Host: {}\r\n", server.addr));
        for (k, v) in req.headers() {
            if k != "host" {
                head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
            }
        }
        head.push_str("\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(STEP, tcp.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 101"), "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix("sec-websocket-protocol: "))
            .map(|v| v.trim().to_owned())
    }
    let open = start(config()).await;
    assert_eq!(
        selected(&open, "", "chat, roomcast", None).await.as_deref(),
        Some("roomcast")
    );
    assert_eq!(selected(&open, "", "chat", None).await, None);
    open.stop().await;

    let auth = start(auth_config()).await;
    let bearer = format!("bearer.{token}").to_ascii_lowercase();
    let q = format!("?token={token}");
    let header = format!("Bearer {token}");
    assert_eq!(
        selected(&auth, "", &format!("chat, bearer.{token}, roomcast"), None)
            .await
            .as_deref(),
        Some("roomcast")
    );
    assert_eq!(
        selected(&auth, "", &format!("chat, bearer.{token}"), None)
            .await
            .as_deref(),
        Some(bearer.as_str()),
        "the token's own entry"
    );
    assert_eq!(
        selected(&auth, &q, "chat", None).await,
        None,
        "token in the query"
    );
    assert_eq!(
        selected(&auth, "", "chat", Some(&header)).await,
        None,
        "token in the header"
    );
    assert_eq!(
        selected(&auth, &q, "roomcast", None).await.as_deref(),
        Some("roomcast")
    );
    auth.stop().await;
}

/// http-api.md, "Responses": malformed URLs get the JSON envelope.
#[tokio::test]
async fn malformed_urls_get_json_errors() {
    let server = start(config()).await;
    let (status, head, body) = http_full(server.addr, "GET", "/api/groups/%FF", &[], &[]).await;
    assert_eq!(status, 400, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "invalid_group", "{body}");
    let (status, head, body) = http_full(
        server.addr,
        "POST",
        "/api/publish?group=a&group=b",
        &[("Content-Type", "application/octet-stream")],
        b"raw",
    )
    .await;
    assert_eq!(status, 400, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "bad_request", "{body}");
    server.stop().await;
}

/// configuration.md: `config --show-secrets` prints both secrets, and
/// `--help` says so.
#[test]
fn show_secrets_shows_the_jwt_secret_too() {
    let bin = env!("CARGO_BIN_EXE_roomcast");
    let out = std::process::Command::new(bin)
        .args(["config", "--show-secrets", "--jwt-secret", SECRET])
        .args(["--api-key", "0123456789abcdef-doc-key"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(t["jwt_secret"].as_str(), Some(SECRET));
    assert_eq!(t["api_key"].as_str(), Some("0123456789abcdef-doc-key"));
    let help = std::process::Command::new(bin)
        .args(["config", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("`api_key` and `jwt_secret`"), "{help}");
}
