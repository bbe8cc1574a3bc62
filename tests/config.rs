//! Configuration layering through the real binary: defaults < TOML file <
//! ROOMCAST_* environment < flags, and rejection of unknown or bad keys.

use std::process::{Command, Output};

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
            vec![("ROOMCAST_QUEUE_MESAGES", "1")],
            "ROOMCAST_QUEUE_MESAGES",
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
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log-level",
            "info",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap_or_else(|_| panic!("not JSON: {first}"));
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
