//! Real Redis and NATS servers for the cluster tests: each test starts its
//! own on a free loopback port (never the machine's shared ones), kills and
//! restarts it on the same port for fault tests.
//!
//! The binaries come from Debian's `redis-server` and `nats-server`
//! packages. When one is missing, the first test that needs it installs
//! it (`apt-get`, as root) or fails naming the exact command to run: a
//! cluster test never skips. nats-server runs with JetStream (`-js`, its
//! store in a temporary directory of the test's own), which presence uses.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Nats,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::Redis => "redis-server",
            Kind::Nats => "nats-server",
        }
    }
}

const INSTALL: &str = "apt-get update && apt-get install -y redis-server nats-server";

fn on_path(binary: &str) -> bool {
    [
        "/usr/bin",
        "/usr/sbin",
        "/usr/local/bin",
        "/usr/local/sbin",
        "/bin",
        "/sbin",
    ]
    .iter()
    .any(|d| std::path::Path::new(d).join(binary).exists())
        || Command::new("sh")
            .args(["-c", &format!("command -v {binary}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Make sure both brokers are installed (once per test binary).
pub fn require_brokers() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        if on_path("redis-server") && on_path("nats-server") {
            return Ok(());
        }
        eprintln!("redis-server or nats-server is missing: running `{INSTALL}`");
        let ok = Command::new("sh")
            .args(["-c", &format!("DEBIAN_FRONTEND=noninteractive {INSTALL}")])
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok && on_path("redis-server") && on_path("nats-server") {
            Ok(())
        } else {
            Err(format!(
                "the cluster tests need redis-server and nats-server (Debian packages); install them with: {INSTALL}"
            ))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// A free loopback port (bound and released; the broker takes it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A broker server of this test's own.
pub struct BrokerProcess {
    pub kind: Kind,
    pub port: u16,
    child: Option<Child>,
    /// NATS: JetStream's store directory (presence uses JetStream), a
    /// temporary one of this test's own, kept across restarts.
    store: tempfile::TempDir,
}

impl BrokerProcess {
    pub fn start(kind: Kind) -> Self {
        require_brokers();
        let mut b = Self {
            kind,
            port: free_port(),
            child: None,
            store: tempfile::tempdir().expect("a temporary directory"),
        };
        b.restart();
        b
    }

    /// The URL nodes use for `--broker`.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// Start it (again) on its port, and wait until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let mut cmd = Command::new(self.kind.binary());
        match self.kind {
            Kind::Redis => cmd.args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ]),
            // JetStream (history, presence), storing in a directory of this
            // broker's.
            Kind::Nats => cmd
                .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                .arg(self.store_dir()),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start {}: {e}; install it with: {INSTALL}",
                        self.kind.binary()
                    )
                });
            // Ready when it answers on its port, or retry while the port
            // is still held by the process just killed.
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "{} did not start on port {}",
                self.kind.binary(),
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where a NATS server keeps its JetStream data.
    fn store_dir(&self) -> std::path::PathBuf {
        self.store.path().to_path_buf()
    }

    /// Kill it and start it again without any data (Redis runs without
    /// persistence anyway; NATS loses its JetStream store).
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.store_dir());
        let _ = std::fs::create_dir_all(self.store_dir());
        self.restart();
    }

    /// SIGKILL it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT it: a hung broker.
    pub fn pause(&self, stop: bool) {
        let pid = self.child.as_ref().expect("running").id();
        let sig = if stop { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill();
    }
}
