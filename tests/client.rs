//! `roomcast client` (`src/client.rs`) against a real server: receiving,
//! publishing stdin lines (JSON, plain text, binary), `--count`, `--json`,
//! permessage-deflate (and `--no-compression`), `wss://` with `--ca-cert`,
//! and the exit-status errors for an unreachable server, an untrusted
//! certificate and a server that closes the connection.

mod common;

use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use common::*;
use roomcast::client::{ClientArgs, ClientError, ClientExit};
use roomcast::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
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

/// A client running in-process, with pipes for its stdin and stdout.
struct Running {
    stdin: Option<DuplexStream>,
    stdout: tokio::io::Lines<BufReader<DuplexStream>>,
    stderr: JoinHandle<String>,
    task: JoinHandle<Result<ClientExit, ClientError>>,
}

fn spawn_client(args: ClientArgs) -> Running {
    let (stdin, client_in) = tokio::io::duplex(64 * 1024);
    let (client_out, stdout) = tokio::io::duplex(64 * 1024);
    let (client_err, mut err_read) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(roomcast::client::run(
        args,
        BufReader::new(client_in),
        client_out,
        client_err,
    ));
    let stderr = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut err_read, &mut s).await;
        s
    });
    Running {
        stdin: Some(stdin),
        stdout: BufReader::new(stdout).lines(),
        stderr,
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

    /// Wait for the client to finish; returns its result and its stderr.
    async fn finish(self) -> (Result<ClientExit, ClientError>, String, Vec<String>) {
        let result = tokio::time::timeout(STEP, self.task)
            .await
            .expect("client finishes in time")
            .expect("client task");
        let stderr = self.stderr.await.unwrap();
        let mut rest = Vec::new();
        let mut out = self.stdout;
        while let Ok(Some(l)) = out.next_line().await {
            rest.push(l);
        }
        (result, stderr, rest)
    }
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
