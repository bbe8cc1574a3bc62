//! The processes around a benchmark: the server's memory and CPU time read
//! from `/proc`, and a server the load tool starts itself (`--spawn`).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, 100 on every
/// Linux architecture we run on).
const TICKS_PER_SEC: f64 = 100.0;

/// Resource usage of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Resident set size, bytes.
    pub rss: u64,
    /// User plus system CPU time, seconds.
    pub cpu: f64,
}

impl Usage {
    /// Read `/proc/<pid>` (`None`: this process).
    pub fn of(pid: Option<u32>) -> anyhow::Result<Self> {
        let dir = match pid {
            Some(p) => format!("/proc/{p}"),
            None => "/proc/self".to_string(),
        };
        let status = std::fs::read_to_string(format!("{dir}/status"))
            .with_context(|| format!("reading {dir}/status (is the process running?)"))?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no VmRSS in {dir}/status"))?;
        let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
        // Fields after the command name (which may contain spaces): state
        // is the first, utime the 12th and stime the 13th.
        let after = stat.rsplit_once(')').map(|(_, a)| a).context("malformed stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .context("malformed stat")
        };
        let cpu = (ticks(11)? + ticks(12)?) as f64 / TICKS_PER_SEC;
        Ok(Self {
            rss: rss_kib * 1024,
            cpu,
        })
    }
}

/// Settings of a spawned server unless `--server-arg` sets them: no
/// per-IP or message-rate limits, which would measure the limits instead of
/// the server, and quiet logs.
const DEFAULTS: [(&str, &str); 4] = [
    ("--message-rate", "0"),
    ("--connect-rate-per-ip", "0"),
    ("--max-connections-per-ip", "0"),
    ("--log-level", "error"),
];

/// A `roomcast serve` started by the load tool, killed when dropped.
#[derive(Debug)]
pub struct SpawnedServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl SpawnedServer {
    /// Start this binary's `serve` on a free loopback port with
    /// [`DEFAULTS`] and `extra` arguments, and wait until it accepts
    /// connections.
    pub fn start(extra: &[String]) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let exe: PathBuf = std::env::current_exe().context("locating the roomcast binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve").arg("--listen").arg(addr.to_string());
        for (flag, value) in DEFAULTS {
            let given = extra
                .iter()
                .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|rest| rest.starts_with('=')));
            if !given {
                cmd.args([flag, value]);
            }
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting roomcast serve")?;
        // A cluster node is ready when `/readyz` says so (it has its
        // broker); over TLS, plain HTTP cannot ask, so listening must do.
        let has = |flag: &str| {
            extra
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        let ask_readyz = has("--broker") && !has("--tls-cert");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = if ask_readyz {
                ready(addr)
            } else {
                TcpStream::connect(addr).is_ok()
            };
            if up {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("the spawned server exited at start ({status}); check --server-arg values");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the spawned server was not ready on {addr} within 10 s (is its broker running?)");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, addr })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Whether `GET /readyz` on `addr` answers 200.
fn ready(addr: SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 12];
    s.write_all(req.as_bytes()).is_ok() && s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_usage() {
        let u = Usage::of(None).unwrap();
        assert!(u.rss > 1024 * 1024, "{u:?}");
        assert!(u.cpu >= 0.0);
        assert!(Usage::of(Some(u32::MAX)).is_err());
    }
}
