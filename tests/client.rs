//! `roomcast client` (`src/client.rs`) against a real server: receiving,
//! publishing stdin lines (JSON, plain text, binary), `--count`, `--json`,
//! permessage-deflate (and `--no-compression`), `wss://` with `--ca-cert`,
//! and the exit-status errors for an unreachable server, an untrusted
//! certificate and a server that closes the connection; `--reconnect`
//! (recovery in a group with history, a restarted server, a group without
//! history, lines typed while disconnected, a token refused on reconnect)
//! through a TCP proxy that can fail the network under the client.

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use common::*;
use roomcast::client::{ClientArgs, ClientError, ClientExit};
use roomcast::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ClientArgs,
}

/// Parse client arguments as the command line would.
fn args(argv: &[&str]) -> ClientArgs {
    Cli::try_parse_from(std::iter::once("client").chain(argv.iter().copied()))
        .expect("valid arguments")
        .args
}

/// A client running in-process, with pipes for its stdin, stdout and
/// stderr.
struct Running {
    stdin: Option<DuplexStream>,
    stdout: tokio::io::Lines<BufReader<DuplexStream>>,
    /// Its stderr, line by line, as written.
    stderr: mpsc::UnboundedReceiver<String>,
    /// The stderr lines read so far.
    stderr_seen: Vec<String>,
    task: JoinHandle<Result<ClientExit, ClientError>>,
}

fn spawn_client(args: ClientArgs) -> Running {
    let (stdin, client_in) = tokio::io::duplex(64 * 1024);
    let (client_out, stdout) = tokio::io::duplex(64 * 1024);
    let (client_err, err_read) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(roomcast::client::run(
        args,
        BufReader::new(client_in),
        client_out,
        client_err,
    ));
    let (err_tx, stderr) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(err_read).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let _ = err_tx.send(l);
        }
    });
    Running {
        stdin: Some(stdin),
        stdout: BufReader::new(stdout).lines(),
        stderr,
        stderr_seen: Vec::new(),
        task,
    }
}

impl Running {
    async fn write_stdin(&mut self, s: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(s.as_bytes()).await.unwrap();
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Next line the client printed, as JSON.
    async fn line(&mut self) -> Value {
        let line = tokio::time::timeout(STEP, self.stdout.next_line())
            .await
            .expect("timed out waiting for client output")
            .unwrap()
            .expect("client output ended");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
    }

    /// Wait for the next stderr line that contains `needle` (the lines
    /// before it are kept for [`Running::finish`] and [`Running::stop`]).
    async fn stderr_line(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stderr.recv())
                .await
                .unwrap_or_else(|_| panic!("no stderr line with {needle:?} in time: {:?}", self.stderr_seen))
                .unwrap_or_else(|| panic!("stderr ended without {needle:?}: {:?}", self.stderr_seen));
            self.stderr_seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// All of stderr, once the client is gone.
    async fn all_stderr(mut self) -> (String, tokio::io::Lines<BufReader<DuplexStream>>) {
        while let Some(l) = self.stderr.recv().await {
            self.stderr_seen.push(l);
        }
        (self.stderr_seen.join("\n"), self.stdout)
    }

    /// Wait for the client to finish; returns its result, its stderr and
    /// the stdout lines not read yet.
    async fn finish(mut self) -> (Result<ClientExit, ClientError>, String, Vec<String>) {
        let result = tokio::time::timeout(STEP, &mut self.task)
            .await
            .expect("client finishes in time")
            .expect("client task");
        let (stderr, out) = self.all_stderr().await;
        (result, stderr, rest(out).await)
    }

    /// Stop a client that would run on (Ctrl-C); returns its stderr and
    /// the stdout lines not read yet.
    async fn stop(self) -> (String, Vec<String>) {
        self.task.abort();
        let (stderr, out) = self.all_stderr().await;
        (stderr, rest(out).await)
    }
}

/// The lines left on a client's stdout.
async fn rest(mut out: tokio::io::Lines<BufReader<DuplexStream>>) -> Vec<String> {
    let mut rest = Vec::new();
    while let Ok(Some(l)) = out.next_line().await {
        rest.push(l);
    }
    rest
}

/// Run the client to completion with a fixed stdin.
async fn run_client(args: ClientArgs, stdin: &str) -> (Result<ClientExit, ClientError>, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let result = tokio::time::timeout(
        STEP,
        roomcast::client::run(args, stdin.as_bytes(), &mut out, &mut err),
    )
    .await
    .expect("client finishes in time");
    (
        result,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[tokio::test]
async fn receives_messages_published_by_another_client() {
    let server = start(config()).await;
    let url = server.url("/ws");
    let mut client = spawn_client(args(&[&url, "--join", "lobby", "--join", "other"]));
    server.wait_stats("client joined", |s| s.groups == 2).await;

    let (mut publisher, publisher_id) = connect(&server).await;
    let ack = request(
        &mut publisher,
        json!({"type":"publish","group":"lobby","data":{"text":"hi"},"id":1}),
    )
    .await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(
        client.line().await,
        json!({"type":"message","group":"lobby","from":publisher_id,"data":{"text":"hi"}})
    );
    request(
        &mut publisher,
        json!({"type":"publish","group":"other","data":[1,2],"id":2}),
    )
    .await;
    assert_eq!(client.line().await["data"], json!([1, 2]));

    // A binary delivery is printed as JSON with base64.
    use futures_util::SinkExt;
    publisher
        .send(Message::binary(b"\x03\0\0\0\x05lobbyhello".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        client.line().await,
        json!({"type":"message","group":"lobby","binary":"aGVsbG8="})
    );

    // Data spread over several lines still prints as one line.
    publisher
        .send(Message::text(
            "{\"type\":\"publish\",\"group\":\"lobby\",\"data\":{\"a\":\n1},\"id\":3}",
        ))
        .await
        .unwrap();
    assert_eq!(client.line().await["data"], json!({"a":1}));

    // stdin ended but the client is in groups: it keeps receiving.
    client.close_stdin();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !client.task.is_finished(),
        "keeps listening after EOF while in a group"
    );
    request(
        &mut publisher,
        json!({"type":"publish","group":"lobby","data":"after eof","id":4}),
    )
    .await;
    assert_eq!(client.line().await["data"], "after eof");
    client.task.abort();
    server.stop().await;
}

#[tokio::test]
async fn publishes_stdin_lines_to_the_first_group() {
    let server = start(config()).await;
    let (mut member, _) = connect(&server).await;
    assert_eq!(
        request(&mut member, json!({"type":"join","group":"lobby","id":1})).await["type"],
        "ack"
    );
    let url = server.url("/ws");
    let mut client = spawn_client(args(&[&url, "--join", "lobby", "--join", "second"]));
    client
        .write_stdin("{\"text\": \"hi\"}\nhello world\n\n42\n\"42\"\r\n")
        .await;
    let received: Vec<Value> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let m = recv_json(&mut member).await;
            assert_eq!(m["type"], "message", "{m}");
            assert_eq!(m["group"], "lobby", "{m}");
            v.push(m["data"].clone());
        }
        v
    };
    assert_eq!(
        received,
        [json!({"text":"hi"}), json!("hello world"), json!(42), json!("42")],
        "JSON lines as JSON, other lines as strings, empty lines skipped"
    );
    // The client is a member too: it prints its own publications.
    assert_eq!(client.line().await["data"], json!({"text":"hi"}));
    client.close_stdin();
    client.task.abort();
    server.stop().await;
}

#[tokio::test]
async fn json_data_is_sent_verbatim() {
    let server = start(config()).await;
    let (mut member, _) = connect(&server).await;
    request(&mut member, json!({"type":"join","group":"g","id":1})).await;
    let url = server.url("/ws");
    let (result, _, err) = run_client(args(&[&url, "--join", "g", "--count", "1"]), "{\"x\": 1.50}\n").await;
    result.unwrap_or_else(|e| panic!("{e}; stderr {err}"));
    match recv(&mut member).await {
        Message::Text(t) => assert!(t.contains(r#""data":{"x": 1.50}"#), "{t}"),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn send_binary_publishes_type_3() {
    let server = start(config()).await;
    let (mut member, _) = connect(&server).await;
    request(&mut member, json!({"type":"join","group":"lobby","id":1})).await;
    let url = server.url("/ws");
    let (result, out, err) = run_client(
        args(&[&url, "--join", "lobby", "--send-binary", "--count", "2"]),
        "hello\nnot {json}",
    )
    .await;
    let exit = result.unwrap_or_else(|e| panic!("{e}; stderr {err}"));
    assert_eq!(exit.messages, 2);
    for expected in [&b"hello"[..], b"not {json}"] {
        match recv(&mut member).await {
            Message::Binary(b) => {
                let mut frame = b"\x04\0\0\0\x05lobby".to_vec();
                frame.extend_from_slice(expected);
                assert_eq!(&b[..], &frame[..]);
            }
            other => panic!("expected a binary delivery, got {other:?}"),
        }
    }
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        lines,
        [
            json!({"type":"message","group":"lobby","binary":"aGVsbG8="}),
            json!({"type":"message","group":"lobby","binary":"bm90IHtqc29ufQ=="}),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn count_stops_after_n_messages() {
    let server = start(config()).await;
    let url = server.url("/ws");
    let client = spawn_client(args(&[&url, "--join", "g", "--count", "2"]));
    server.wait_stats("client joined", |s| s.groups == 1).await;
    let (mut publisher, _) = connect(&server).await;
    for i in 0..5 {
        request(
            &mut publisher,
            json!({"type":"publish","group":"g","data":i,"id":i}),
        )
        .await;
    }
    let (result, stderr, lines) = client.finish().await;
    let exit = result.unwrap_or_else(|e| panic!("{e}; stderr {stderr}"));
    assert_eq!(exit.messages, 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let data: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["data"].clone())
        .collect();
    assert_eq!(data, [json!(0), json!(1)]);
    // The client closed cleanly and is gone.
    server
        .wait_stats("client disconnected", |s| s.connections == 1)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn json_prints_every_frame() {
    let server = start(config()).await;
    let url = server.url("/ws");
    let (result, out, err) = run_client(args(&[&url, "--join", "g", "--json", "--count", "1"]), "hi\n").await;
    result.unwrap_or_else(|e| panic!("{e}; stderr {err}"));
    let frames: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(frames[0]["type"], "welcome", "{frames:?}");
    assert_eq!(frames[1], json!({"type":"ack","id":1}), "{frames:?}");
    assert_eq!(frames[2]["type"], "message", "{frames:?}");
    assert_eq!(frames[2]["data"], "hi", "{frames:?}");
    server.stop().await;
}

#[tokio::test]
async fn eof_with_nothing_to_wait_for_exits_0() {
    let server = start(config()).await;
    let url = server.url("/ws");
    // No group and no --count: stdin's end is the end.
    let (result, out, err) = run_client(args(&[&url, "--json"]), "").await;
    let exit = result.unwrap_or_else(|e| panic!("{e}; stderr {err}"));
    assert_eq!(exit.messages, 0);
    assert!(out.contains("welcome"), "{out}");
    // It closed the connection: the server sees it go.
    server
        .wait_stats("client disconnected", |s| s.connections == 0)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn lines_without_a_group_are_reported() {
    let server = start(config()).await;
    let url = server.url("/ws");
    let (result, _, err) = run_client(args(&[&url]), "hello\n").await;
    let e = result.expect_err("a line was not published");
    assert_eq!(e.exit_code(), 1);
    assert!(
        err.contains("stdin line 1 not published: no group joined"),
        "{err}"
    );
    server.stop().await;
}

#[tokio::test]
async fn rejected_join_exits_1() {
    let server = start(config()).await;
    let url = server.url("/ws");
    let long = "x".repeat(129);
    let (result, _, _) = run_client(args(&[&url, "--join", &long]), "").await;
    let e = result.expect_err("join must fail");
    assert_eq!(e.exit_code(), 1);
    let msg = e.to_string();
    assert!(
        msg.contains("join of group") && msg.contains("invalid_group"),
        "{msg}"
    );
    server.stop().await;
}

#[tokio::test]
async fn unreachable_server_exits_2() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("ws://{addr}/ws");
    let (result, _, _) = run_client(args(&[&url, "--join", "g"]), "").await;
    let e = result.expect_err("cannot connect");
    assert_eq!(e.exit_code(), 2);
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("cannot connect to {url}: ")), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
}

#[tokio::test]
async fn wrong_path_exits_2_and_bad_url_exits_1() {
    let server = start(config()).await;
    let (result, _, _) = run_client(args(&[&server.url("/nope")]), "").await;
    let e = result.expect_err("404");
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("404"), "{e}");
    let (result, _, _) = run_client(args(&["http://127.0.0.1:1/ws"]), "").await;
    assert_eq!(result.expect_err("bad scheme").exit_code(), 1);
    server.stop().await;
}

#[tokio::test]
async fn server_close_exits_3() {
    let mut server = start(config()).await;
    let url = server.url("/ws");
    let client = spawn_client(args(&[&url, "--join", "g"]));
    server.wait_stats("client joined", |s| s.groups == 1).await;
    server.begin_shutdown();
    let (result, _, _) = client.finish().await;
    let e = result.expect_err("server closed");
    assert_eq!(e.exit_code(), 3);
    assert_eq!(
        e.to_string(),
        "the server closed the connection: 1001 (server shutting down)"
    );
    server.join().await;
}

/// The real binary, when `main.rs` has the subcommand.
#[tokio::test]
async fn binary_exit_codes_and_output() {
    let bin = env!("CARGO_BIN_EXE_roomcast");
    let help = std::process::Command::new(bin)
        .args(["client", "--help"])
        .output()
        .unwrap();
    if !help.status.success() {
        eprintln!("`roomcast client` is not wired in main.rs yet; skipping");
        return;
    }
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit status:"));

    let server = start(config()).await;
    let (mut member, _) = connect(&server).await;
    request(&mut member, json!({"type":"join","group":"g","id":1})).await;
    let url = server.url("/ws");
    // stdin stays open until the client exits: --count ends it, not EOF.
    let out = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(bin)
            .args(["client", &url, "--join", "g", "--count", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, b"from the binary\n").unwrap();
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        out
    });
    let out = tokio::time::timeout(STEP, out).await.unwrap().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["data"], "from the binary");
    assert_eq!(recv_json(&mut member).await["data"], "from the binary");

    // Unreachable: exit 2 and the message on stderr.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    drop(listener);
    let out = std::process::Command::new(bin)
        .args(["client", &url])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("roomcast client: cannot connect to {url}: ")),
        "{stderr}"
    );
    server.stop().await;
}

/// Publish a large, compressible message to `big`, of which the client is
/// the only member; returns how many compressions the server counted
/// meanwhile, after checking that the client printed the message intact.
async fn compressions_for_one_large_message(client_options: &[&str]) -> u64 {
    let server = start(config()).await;
    let url = server.url("/ws");
    let mut argv = vec![url.as_str(), "--join", "big"];
    argv.extend_from_slice(client_options);
    let mut client = spawn_client(args(&argv));
    server.wait_stats("client joined", |s| s.groups == 1).await;
    // A plain (tungstenite) publisher, not in the group: the client is the
    // only recipient, so any compression is for it.
    let (mut publisher, publisher_id) = connect(&server).await;
    let text = "hello everyone, this compresses well. ".repeat(40);
    assert!(text.len() >= 1024);
    let before = server.node.metrics.compressions();
    let ack = request(
        &mut publisher,
        json!({"type":"publish","group":"big","data":text,"id":1}),
    )
    .await;
    assert_eq!(ack, json!({"type":"ack","id":1}));
    assert_eq!(
        client.line().await,
        json!({"type":"message","group":"big","from":publisher_id,"data":text})
    );
    let compressions = server.node.metrics.compressions() - before;
    client.task.abort();
    server.stop().await;
    compressions
}

#[tokio::test]
async fn negotiates_deflate_by_default() {
    assert_eq!(
        compressions_for_one_large_message(&[]).await,
        1,
        "the server compressed the message for the client"
    );
}

#[tokio::test]
async fn no_compression_does_not_offer_deflate() {
    assert_eq!(
        compressions_for_one_large_message(&["--no-compression"]).await,
        0,
        "nothing compressed for a client without permessage-deflate"
    );
}

/// A TLS server with a self-signed certificate for 127.0.0.1, and that
/// certificate's PEM file (what `--ca-cert` takes).
async fn tls_server(dir: &std::path::Path) -> (TestServer, String, std::path::PathBuf) {
    let key =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let (cert, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&key_file, key.signing_key.serialize_pem()).unwrap();
    let server = start(Config {
        tls_cert: Some(cert.clone()),
        tls_key: Some(key_file),
        ..config()
    })
    .await;
    let url = format!("wss://{}/ws", server.addr);
    (server, url, cert)
}

#[tokio::test]
async fn wss_with_ca_cert_joins_publishes_and_receives() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url, cert) = tls_server(dir.path()).await;
    let cert = cert.to_str().unwrap();
    // Deflate over TLS too: a large line comes back (the echo of our own
    // publication) compressed and is printed intact.
    let big = "over TLS, compressed ".repeat(30);
    let before = server.node.metrics.compressions();
    let (result, out, err) = run_client(
        args(&[
            &url,
            "--ca-cert",
            cert,
            "--join",
            "lobby",
            "--json",
            "--count",
            "2",
        ]),
        &format!("hello\n{big}\n"),
    )
    .await;
    let exit = result.unwrap_or_else(|e| panic!("{e}; stderr {err}"));
    // (The last ack may come after the echo that ends the session.)
    assert_eq!(exit.messages, 2);
    let frames: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(frames[0]["type"], "welcome", "{frames:?}");
    assert_eq!(frames[1], json!({"type":"ack","id":1}), "{frames:?}");
    let data: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| &f["data"])
        .collect();
    assert_eq!(data, [&json!("hello"), &json!(big)], "{frames:?}");
    assert_eq!(server.node.metrics.compressions() - before, 1);
    server.stop().await;
}

#[tokio::test]
async fn wss_without_the_ca_exits_2_naming_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url, _) = tls_server(dir.path()).await;
    let (result, _, _) = run_client(args(&[&url, "--join", "g"]), "").await;
    let e = result.expect_err("an untrusted certificate");
    assert_eq!(e.exit_code(), 2, "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("cannot connect to {url}: ")), "{msg}");
    assert!(msg.contains("certificate"), "{msg}");
    // --ca-cert is only for wss://, and a file that is not PEM is a usage
    // error.
    let (result, _, _) = run_client(args(&[&server.url("/ws"), "--ca-cert", "/dev/null"]), "").await;
    assert_eq!(result.expect_err("ws:// with --ca-cert").exit_code(), 1);
    let (result, _, _) = run_client(args(&[&url, "--ca-cert", "/dev/null"]), "").await;
    let e = result.expect_err("empty --ca-cert");
    assert_eq!(e.exit_code(), 1, "{e}");
    assert!(e.to_string().contains("--ca-cert /dev/null"), "{e}");
    server.stop().await;
}

// ---- --reconnect ----

/// `chat:` groups keep 100 publications for a minute; others none.
fn history_config() -> Config {
    Config {
        groups: vec![roomcast::groups::GroupRule {
            prefix: "chat:".into(),
            history_size: 100,
            history_ttl: Duration::from_secs(60),
            presence: false,
            join_leave: false,
        }],
        message_rate: 0,
        ..config()
    }
}

/// `POST /api/publish` of JSON `data` to `group`.
async fn publish(server: &TestServer, group: &str, data: Value) {
    let (status, body) = api_post(server.addr, "/api/publish", json!({"group":group,"data":data})).await;
    assert_eq!(status, 200, "{body}");
}

/// Wait until `group` has one member other than `not`; returns its id.
async fn member_of(server: &TestServer, group: &str, not: Option<&str>) -> String {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let (status, body) = api_get(server.addr, &format!("/api/groups/{group}")).await;
        if status == 200
            && let Some(id) = body["connections"][0].as_str()
            && Some(id) != not
        {
            return id.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new member of {group}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP proxy in front of a server, so that a test can fail the network
/// under a client: [`Proxy::cut`] drops every connection through it (the
/// client sees its socket end, with no Close frame) and refuses new ones
/// (accepted and dropped at once) until [`Proxy::resume`];
/// [`Proxy::freeze`] makes the connections through it silent black holes,
/// both ways, without closing them.
struct Proxy {
    addr: std::net::SocketAddr,
    refusing: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Piped>>>,
    task: JoinHandle<()>,
}

/// One connection through the proxy: its two directions, and whether they
/// still carry anything.
struct Piped {
    directions: [JoinHandle<()>; 2],
    frozen: Arc<AtomicBool>,
}

/// Copy `from` to `to`, or (frozen) read and drop, until either end ends.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if !frozen.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refusing = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (refusing, conns) = (refusing.clone(), conns.clone());
            async move {
                while let Ok((down, _)) = listener.accept().await {
                    if refusing.load(Ordering::SeqCst) {
                        continue;
                    }
                    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let frozen = Arc::new(AtomicBool::new(false));
                    let ((down_read, down_write), (up_read, up_write)) = (down.into_split(), up.into_split());
                    conns.lock().unwrap().push(Piped {
                        directions: [
                            tokio::spawn(pipe(down_read, up_write, frozen.clone())),
                            tokio::spawn(pipe(up_read, down_write, frozen.clone())),
                        ],
                        frozen,
                    });
                }
            }
        });
        Self {
            addr,
            refusing,
            conns,
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            for d in c.directions {
                d.abort();
            }
        }
    }

    fn resume(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }

    /// The connections through the proxy now carry nothing more, either
    /// way, and stay open; new ones work.
    fn freeze(&self) {
        for c in self.conns.lock().unwrap().iter() {
            c.frozen.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

#[tokio::test]
async fn reconnect_recovers_what_was_published_meanwhile_exactly_once() {
    let server = start(history_config()).await;
    let proxy = Proxy::start(server.addr).await;
    let url = proxy.url();
    // 1 before, 20 JSON and 1 binary while away, 1 live.
    let mut client = spawn_client(args(&[&url, "--join", "chat:1", "--reconnect", "--count", "23"]));
    member_of(&server, "chat:1", None).await;
    publish(&server, "chat:1", json!("before")).await;
    assert_eq!(
        client.line().await,
        json!({"type":"message","group":"chat:1","offset":1,"data":"before"})
    );

    // The network fails, and stays down while the group goes on.
    proxy.cut();
    client.stderr_line("connection lost").await;
    server
        .wait_stats("the server saw the client go", |s| s.groups == 0)
        .await;
    for i in 1..=20 {
        publish(&server, "chat:1", json!(i)).await;
    }
    let (status, body) = http(
        server.addr,
        "POST",
        "/api/publish?group=chat%3A1",
        &[("Content-Type", "application/octet-stream")],
        b"bytes",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    proxy.resume();

    // Everything missed, in order, once; then live traffic.
    for i in 1..=20 {
        assert_eq!(
            client.line().await,
            json!({"type":"message","group":"chat:1","offset":i + 1,"data":i})
        );
    }
    assert_eq!(
        client.line().await,
        json!({"type":"message","group":"chat:1","offset":22,"binary":"Ynl0ZXM="}),
        "a binary delivery with an offset (type 8)"
    );
    client.stderr_line("reconnected (attempt ").await;
    publish(&server, "chat:1", json!("live")).await;
    assert_eq!(
        client.line().await,
        json!({"type":"message","group":"chat:1","offset":23,"data":"live"})
    );
    let (result, stderr, rest) = client.finish().await;
    let exit = result.unwrap_or_else(|e| panic!("{e}; stderr {stderr}"));
    assert_eq!(exit.messages, 23, "the recovered messages count for --count");
    assert!(rest.is_empty(), "nothing printed twice: {rest:?}");
    assert!(
        stderr.contains("; reconnecting in ") && stderr.contains("(attempt 1)"),
        "{stderr}"
    );
    assert!(!stderr.contains("could not be recovered"), "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn a_server_restart_is_reported_as_not_recovered_and_live_messages_go_on() {
    let server = start(history_config()).await;
    let addr = server.addr;
    let mut client = spawn_client(args(&[&server.url("/ws"), "--join", "chat:1", "--reconnect"]));
    member_of(&server, "chat:1", None).await;
    for i in 1..=3 {
        publish(&server, "chat:1", json!(i)).await;
        assert_eq!(client.line().await["offset"], i);
    }
    // The memory broker's history goes with the server: a new epoch.
    server.stop().await;
    client
        .stderr_line("the server closed the connection: 1001 (server shutting down); reconnecting in ")
        .await;
    let server = start(Config {
        listen: addr,
        ..history_config()
    })
    .await;
    assert_eq!(
        client.stderr_line("could not be recovered").await,
        "roomcast client: group 'chat:1': publications could not be recovered after the reconnect \
         (epoch changed: the server lost the group's history); reload state"
    );
    publish(&server, "chat:1", json!("live")).await;
    assert_eq!(
        client.line().await,
        json!({"type":"message","group":"chat:1","offset":1,"data":"live"}),
        "carries on from the new position"
    );
    let (stderr, rest) = client.stop().await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(stderr.matches("could not be recovered").count(), 1, "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn a_group_without_history_is_simply_rejoined() {
    let server = start(config()).await;
    let mut client = spawn_client(args(&[&server.url("/ws"), "--join", "lobby", "--reconnect"]));
    let first = member_of(&server, "lobby", None).await;
    publish(&server, "lobby", json!("before")).await;
    assert_eq!(
        client.line().await,
        json!({"type":"message","group":"lobby","data":"before"})
    );
    let (status, body) = api_post(
        server.addr,
        "/api/disconnect",
        json!({"conn": first, "code": 4000, "reason": "go away"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    client
        .stderr_line("the server closed the connection: 4000 (go away); reconnecting in ")
        .await;
    let second = member_of(&server, "lobby", Some(&first)).await;
    publish(&server, "lobby", json!("after")).await;
    assert_eq!(
        client.line().await,
        json!({"type":"message","group":"lobby","data":"after"})
    );
    let (stderr, rest) = client.stop().await;
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        stderr.contains(&format!("reconnected (attempt 1) as connection {second}")),
        "{stderr}"
    );
    assert!(!stderr.contains("could not be recovered"), "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn lines_typed_while_disconnected_are_published_after_the_reconnect() {
    let server = start(config()).await;
    let proxy = Proxy::start(server.addr).await;
    let (mut member, _) = connect(&server).await;
    request(&mut member, json!({"type":"join","group":"lobby","id":1})).await;
    let mut client = spawn_client(args(&[&proxy.url(), "--join", "lobby", "--reconnect"]));
    client.write_stdin("first\n").await;
    assert_eq!(recv_json(&mut member).await["data"], "first");
    // (Its echo reached the client: the cut below loses nothing in flight.)
    assert_eq!(client.line().await["data"], "first");

    proxy.cut();
    client.stderr_line("connection lost").await;
    client.write_stdin("while away\n{\"n\":2}\n").await;
    client.stderr_line("stdin lines are held").await;
    proxy.resume();
    assert_eq!(recv_json(&mut member).await["data"], "while away");
    assert_eq!(recv_json(&mut member).await["data"], json!({"n":2}));
    // And stdin goes on after the reconnect.
    client.write_stdin("after\n").await;
    assert_eq!(recv_json(&mut member).await["data"], "after");
    // The client printed the echo of its publications, once each.
    let mut printed = Vec::new();
    for _ in 0..3 {
        printed.push(client.line().await["data"].clone());
    }
    assert_eq!(printed, [json!("while away"), json!({"n":2}), json!("after")]);
    let (stderr, rest) = client.stop().await;
    assert!(rest.is_empty(), "{rest:?}");
    assert!(!stderr.contains("may not have been published"), "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn a_refused_token_on_reconnect_is_not_retried() {
    let server = start(Config {
        jwt_secret: Some(JWT_SECRET.into()),
        ..config()
    })
    .await;
    let addr = server.addr;
    let token = hs256_token(&json!({"sub":"ann","exp": unix_now() + 600}));
    let url = format!("{}?token={token}", server.url("/ws"));
    let client = spawn_client(args(&[&url, "--join", "lobby", "--reconnect"]));
    member_of(&server, "lobby", None).await;
    // The restart rotates the key: the token in the URL is refused.
    server.stop().await;
    let server = start(Config {
        listen: addr,
        jwt_secret: Some("another-hs256-secret-of-at-least-32-bytes".into()),
        ..config()
    })
    .await;
    let (result, stderr, _) = client.finish().await;
    let e = result.expect_err("401 is final");
    assert_eq!(e.exit_code(), 2, "{e}");
    assert!(e.to_string().contains("HTTP 401"), "{e}");
    assert!(
        stderr.contains("refused: not retrying, the same credentials would be refused again"),
        "{stderr}"
    );
    assert_eq!(server.stats().connections, 0);
    server.stop().await;
}

#[tokio::test]
async fn without_reconnect_a_lost_connection_exits_3() {
    let server = start(config()).await;
    let proxy = Proxy::start(server.addr).await;
    let client = spawn_client(args(&[&proxy.url(), "--join", "lobby"]));
    member_of(&server, "lobby", None).await;
    proxy.cut();
    let (result, stderr, _) = client.finish().await;
    let e = result.expect_err("lost");
    assert_eq!(e.exit_code(), 3, "{e}");
    assert!(e.to_string().starts_with("connection lost: "), "{e}");
    assert!(!stderr.contains("reconnecting"), "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn a_connection_gone_silent_is_replaced_and_what_it_swallowed_recovered() {
    let server = start(history_config()).await;
    let proxy = Proxy::start(server.addr).await;
    let mut client = spawn_client(args(&[
        &proxy.url(),
        "--join",
        "chat:1",
        "--reconnect",
        "--keepalive",
        "300ms",
    ]));
    member_of(&server, "chat:1", None).await;
    publish(&server, "chat:1", json!(1)).await;
    assert_eq!(client.line().await["offset"], 1);
    // The network stops carrying anything, and closes nothing: the
    // publications sent meanwhile are lost on the way.
    proxy.freeze();
    publish(&server, "chat:1", json!(2)).await;
    publish(&server, "chat:1", json!(3)).await;
    // A line typed now goes into the void: it is reported, not resent
    // (the client cannot know whether the server got it).
    client.write_stdin("into the void\n").await;
    client
        .stderr_line("connection lost: nothing from the server for 600ms, not even the answer to a ping")
        .await;
    assert_eq!(
        client.stderr_line("stdin line 1").await,
        "roomcast client: stdin line 1 may not have been published: the connection was lost before the \
         server acknowledged it (not sent again)"
    );
    for i in 2..=3 {
        assert_eq!(
            client.line().await,
            json!({"type":"message","group":"chat:1","offset":i,"data":i})
        );
    }
    let (stderr, rest) = client.stop().await;
    assert!(rest.is_empty(), "{rest:?}");
    assert!(stderr.contains("reconnected (attempt 1)"), "{stderr}");
    server.stop().await;
}
