//! Configuration layering through the real binary: defaults < TOML file <
//! ROOMCAST_* environment < flags, rejection of unknown or bad keys, and
//! a warning (not an error) for unknown ROOMCAST_* variables.

mod common;

use std::process::{Command, Output};

use common::ServerProcess;

fn roomcast(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    cmd.args(args);
    // Start from a clean slate of ROOMCAST_* variables.
    for (k, _) in std::env::vars() {
        if k.starts_with("ROOMCAST_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn effective(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let out = roomcast(args, env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().parse().unwrap()
}

fn write_file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("roomcast-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn defaults_print_as_a_loadable_file() {
    let t = effective(&["config"], &[]);
    assert_eq!(t["listen"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(t["max_message_size"].as_integer(), Some(65536));
    assert_eq!(t["ping_interval"].as_str(), Some("25s"));
    assert_eq!(t["slow_consumer"].as_str(), Some("disconnect"));
    // The printed file loads back to the same configuration.
    let text = String::from_utf8(roomcast(&["config"], &[]).stdout).unwrap();
    let path = write_file("roundtrip.toml", &text);
    assert_eq!(effective(&["config", "--config", &path], &[]), t);
}

/// Unset, the per-IP limits are printed as comments (a value printed as a
/// key would hold every address once the file is loaded back); set, even
/// to their default values, they are printed and survive the round trip.
#[test]
fn per_ip_limits_print_unset_as_comments_and_set_as_keys() {
    let text = String::from_utf8(roomcast(&["config"], &[]).stdout).unwrap();
    for key in ["max_connections_per_ip", "connect_rate_per_ip"] {
        assert!(text.contains(&format!("\n# {key} = ")), "{text}");
    }
    let t: toml::Table = text.parse().unwrap();
    assert!(!t.contains_key("max_connections_per_ip") && !t.contains_key("connect_rate_per_ip"));
    let set = [
        "config",
        "--max-connections-per-ip",
        "10000",
        "--connect-rate-per-ip",
        "0",
    ];
    let text = String::from_utf8(roomcast(&set, &[]).stdout).unwrap();
    assert!(!text.contains("# max_connections_per_ip") && !text.contains("# connect_rate_per_ip"));
    let path = write_file("per-ip.toml", &text);
    let t = effective(&["config", "--config", &path], &[]);
    assert_eq!(t["max_connections_per_ip"].as_integer(), Some(10000));
    assert_eq!(t["connect_rate_per_ip"].as_integer(), Some(0));
    let t = effective(&["config"], &[("ROOMCAST_CONNECT_RATE_PER_IP", "1000")]);
    assert_eq!(t["connect_rate_per_ip"].as_integer(), Some(1000));
}

#[test]
fn precedence_is_flags_then_env_then_file_then_defaults() {
    let path = write_file(
        "layers.toml",
        "queue_messages = 7\nqueue_bytes = 4096\nping_interval = \"5s\"\nno_echo = true\n",
    );
    let t = effective(
        &["config", "--config", &path, "--ping-interval", "3s"],
        &[("ROOMCAST_QUEUE_MESSAGES", "9"), ("ROOMCAST_PING_INTERVAL", "4s")],
    );
    assert_eq!(t["ping_interval"].as_str(), Some("3s"), "flag beats env and file");
    assert_eq!(t["queue_messages"].as_integer(), Some(9), "env beats file");
    assert_eq!(t["queue_bytes"].as_integer(), Some(4096), "file beats default");
    assert_eq!(t["no_echo"].as_bool(), Some(true));
    assert_eq!(t["idle_timeout"].as_str(), Some("1m"), "default");
    // The file can also come from ROOMCAST_CONFIG.
    let t = effective(&["config"], &[("ROOMCAST_CONFIG", &path)]);
    assert_eq!(t["queue_messages"].as_integer(), Some(7));
}

#[test]
fn secrets_are_redacted_unless_asked() {
    let key = "0123456789abcdef-secret";
    let t = effective(&["config", "--api-key", key], &[]);
    assert!(!t["api_key"].as_str().unwrap().contains(key));
    let t = effective(&["config", "--show-secrets"], &[("ROOMCAST_API_KEY", key)]);
    assert_eq!(t["api_key"].as_str(), Some(key));
    // Passwords and tokens in broker URLs too.
    for url in [
        "redis://user:hunter22@127.0.0.1:6379/0",
        "nats://127.0.0.1:4222,nats://hunter22@127.0.0.2:4222",
    ] {
        let t = effective(&["config", "--broker", url], &[]);
        let shown = t["broker"].as_str().unwrap();
        assert!(
            !shown.contains("hunter22") && shown.contains("127.0.0.1"),
            "{shown}"
        );
        let t = effective(&["config", "--show-secrets", "--broker", url], &[]);
        assert_eq!(t["broker"].as_str(), Some(url));
    }
}

#[test]
fn bad_keys_and_values_are_rejected_naming_the_key() {
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--config".into(), write_file("typo.toml", "queue_mesages = 7\n")],
            vec![],
            "queue_mesages",
        ),
        (
            vec![
                "--config".into(),
                write_file("type.toml", "queue_messages = \"x\"\n"),
            ],
            vec![],
            "queue_messages",
        ),
        (
            vec![
                "--config".into(),
                write_file("dur.toml", "idle_timeout = \"soon\"\n"),
            ],
            vec![],
            "idle_timeout",
        ),
        (
            vec![
                "--config".into(),
                write_file("syntax.toml", "queue_messages = \n"),
            ],
            vec![],
            "syntax.toml",
        ),
        (
            vec!["--config".into(), "/nonexistent/roomcast.toml".into()],
            vec![],
            "/nonexistent/roomcast.toml",
        ),
        (
            vec![],
            vec![("ROOMCAST_QUEUE_MESSAGES", "many")],
            "--queue-messages",
        ),
        (
            vec!["--ping-interval".into(), "90s".into()],
            vec![],
            "ping_interval",
        ),
        (
            vec!["--queue-messages".into(), "0".into()],
            vec![],
            "queue_messages",
        ),
        (vec!["--api-key".into(), "short".into()], vec![], "api_key"),
    ];
    for (args, env, key) in cases {
        for sub in ["config", "serve"] {
            let mut a = vec![sub];
            a.extend(args.iter().map(String::as_str));
            let out = roomcast(&a, &env);
            assert!(!out.status.success(), "{a:?} {env:?} was accepted");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(key),
                "{a:?} {env:?}: error does not name '{key}': {err}"
            );
        }
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let server = ServerProcess::start(&[]);
    let v = server.startup[0].clone();
    server.stop();
    assert_eq!(v["level"], "INFO", "{v}");
    assert!(
        v["addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{v}"
    );
}

/// Every `ROOMCAST_*` variable that `serve --help` documents is one the
/// unknown-variable check accepts (it may still reject the value).
#[test]
fn every_documented_environment_variable_is_known() {
    let help = String::from_utf8(roomcast(&["serve", "--help"], &[]).stdout).unwrap();
    let names: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .collect();
    assert!(names.len() > 20, "{names:?}");
    assert!(names.contains(&"ROOMCAST_FLUSHERS"), "{names:?}");
    for name in names {
        let out = roomcast(&["config"], &[(name, "1")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("unknown environment variable"), "{name}: {err}");
    }
    // And an optional one arrives in the effective configuration.
    let t = effective(&["config"], &[("ROOMCAST_FLUSHERS", "3")]);
    assert_eq!(t["flushers"].as_integer(), Some(3));
    assert_eq!(
        effective(&["config", "--flushers", "0"], &[])["flushers"].as_integer(),
        Some(0)
    );
}

/// What Kubernetes injects into every pod of a namespace with a Service
/// named `roomcast`.
const SERVICE_LINKS: &[(&str, &str)] = &[
    ("ROOMCAST_PORT", "tcp://10.0.0.1:8080"),
    ("ROOMCAST_SERVICE_HOST", "x"),
];

#[test]
fn unknown_environment_variables_are_a_warning_for_config() {
    let out = roomcast(&["config"], SERVICE_LINKS);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("ROOMCAST_PORT") && warnings[0].contains("ROOMCAST_SERVICE_HOST"),
        "{err}"
    );
    let t: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(t["listen"].as_str(), Some("127.0.0.1:8080"));
    // A known variable with a bad value is still an error.
    let out = roomcast(&["config"], &[SERVICE_LINKS[0], ("ROOMCAST_LISTEN", "tcp://x")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

#[test]
fn serve_starts_with_unknown_environment_variables_and_warns_once() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ROOMCAST_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--log-level", "info"])
        .envs(SERVICE_LINKS.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut logged = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("server exited before listening: {logged:?}");
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        logged.push(v.clone());
        if let Some(addr) = v["addr"].as_str() {
            break addr.to_owned();
        }
    };
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let warnings: Vec<&serde_json::Value> = logged.iter().filter(|v| v["level"] == "WARN").collect();
    let named: Vec<_> = warnings
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .unwrap_or("")
                .contains("environment variable")
        })
        .collect();
    assert_eq!(named.len(), 1, "{logged:?}");
    let message = named[0]["message"].as_str().unwrap();
    assert!(
        message.contains("ROOMCAST_PORT") && message.contains("ROOMCAST_SERVICE_HOST"),
        "{message}"
    );
}

#[test]
fn node_names_are_validated() {
    for bad in ["", "has space", "dot.dash_ok-but-é", &"n".repeat(65)] {
        let out = roomcast(&["config", "--node-name", bad], &[]);
        assert!(!out.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("node_name"), "{bad:?}: {err}");
    }
    let t = effective(&["config"], &[("ROOMCAST_NODE_NAME", "web-1.eu_west")]);
    assert_eq!(t["node_name"].as_str(), Some("web-1.eu_west"));
}

/// `[[groups]]` rules load from the file, print back as a loadable file,
/// and are checked: limits, one rule per prefix, history only where the
/// broker keeps it.
#[test]
fn group_rules_load_print_and_are_checked() {
    let path = write_file(
        "groups.toml",
        "history_size = 5\n\
         [[groups]]\nprefix = \"chat:\"\nhistory_size = 100\nhistory_ttl = \"2m\"\n\
         [[groups]]\nprefix = \"chat:big:\"\n",
    );
    let t = effective(&["config", "--config", &path], &[]);
    assert_eq!(t["history_size"].as_integer(), Some(5));
    let groups = t["groups"].as_array().expect("groups printed");
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["prefix"].as_str(), Some("chat:"));
    assert_eq!(groups[0]["history_ttl"].as_str(), Some("2m"));
    assert_eq!(groups[1]["history_size"].as_integer(), Some(0), "left out: off");
    let text = String::from_utf8(roomcast(&["config", "--config", &path], &[]).stdout).unwrap();
    let again = write_file("groups-again.toml", &text);
    assert_eq!(effective(&["config", "--config", &again], &[]), t, "round trip");
    for (file, key) in [
        (
            "[[groups]]\nprefix = \"a\"\n[[groups]]\nprefix = \"a\"\n",
            "groups.prefix",
        ),
        (
            "[[groups]]\nprefix = \"a\"\nhistory_size = 100001\n",
            "groups.history_size",
        ),
        (
            "[[groups]]\nprefix = \"a\"\nhistory_size = 1\nhistory_ttl = \"0s\"\n",
            "groups.history_ttl",
        ),
        ("[[groups]]\nprefix = \"a\"\nhistory = 1\n", "history"),
        ("history_memory = 10\n", "history_memory"),
    ] {
        let path = write_file("bad-groups.toml", file);
        let out = roomcast(&["config", "--config", &path], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {err}");
        assert!(err.contains(&format!("invalid setting '{key}")), "{file}: {err}");
    }
    let out = roomcast(&["config", "--history-size", "3", "--history-ttl", "1m"], &[]);
    let t: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(
        (t["history_size"].as_integer(), t["history_ttl"].as_str()),
        (Some(3), Some("1m"))
    );
}
