//! Limits against abuse at the door: a global connection cap, a cap and a
//! connect rate per client IP, the browser Origin allow-list, and which
//! proxies may name the client in `X-Forwarded-For`. Also the per-connection
//! message rate bucket used by sessions.
//!
//! Everything here is checked before the WebSocket upgrade, so a refused
//! client costs one small HTTP response and no session. A connection that
//! is admitted holds a [`Permit`]; dropping it gives its slot back.
//!
//! Connections that have not upgraded yet (reading their request head,
//! HTTP API calls, probes, keep-alive) are held to the same two caps, in a
//! pool of their own counted by the TCP peer from the moment of accept
//! ([`Limits::accept`]): a client that opens connections and never finishes
//! its request holds at most `max_connections_per_ip` descriptors and
//! request-head buffers. The peer is all that is known then, so a trusted
//! proxy (which carries many clients) is held only to the global cap.
//!
//! IPv6 clients are counted per prefix (`ipv6_prefix_len`, a /64 by
//! default): one subscriber usually gets a whole /64, and counting each
//! address alone would give it 2^64 slots.
//!
//! The two per-IP limits hold only public addresses unless they are set
//! explicitly (`PerIpRule`): by default a loopback, private, CGNAT or
//! link-local client (`is_shared_address`) is not held to them, since
//! such an address is nearly always a proxy, load balancer, NAT or this
//! host, which many clients share.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;
use ipnet::IpNet;
use tokio::time::Instant;

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds `max_connections` already (503).
    ServerFull,
    /// This IP holds `max_connections_per_ip` already (429).
    TooManyFromIp,
    /// This IP connects faster than `connect_rate_per_ip` (429).
    ConnectRate {
        /// When to try again.
        retry_after: Duration,
    },
    /// The `Origin` header is not in the allow-list (403).
    Origin,
    /// No valid token (401; counted here, decided in [`crate::auth`]).
    Unauthorized,
}

impl Refusal {
    /// Label for metrics and the error code in the response.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServerFull => "server_full",
            Self::TooManyFromIp => "too_many_connections_from_ip",
            Self::ConnectRate { .. } => "connect_rate_exceeded",
            Self::Origin => "origin_not_allowed",
            Self::Unauthorized => "unauthorized",
        }
    }

    /// Every reason, for pre-created metric labels.
    pub const ALL: [Refusal; 5] = [
        Self::ServerFull,
        Self::TooManyFromIp,
        Self::ConnectRate {
            retry_after: Duration::ZERO,
        },
        Self::Origin,
        Self::Unauthorized,
    ];

    /// Index into [`Refusal::ALL`].
    pub fn index(self) -> usize {
        match self {
            Self::ServerFull => 0,
            Self::TooManyFromIp => 1,
            Self::ConnectRate { .. } => 2,
            Self::Origin => 3,
            Self::Unauthorized => 4,
        }
    }
}

/// The default of `max_connections_per_ip`, for public addresses.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 10_000;

/// The default of `connect_rate_per_ip`, for public addresses.
pub const DEFAULT_CONNECT_RATE_PER_IP: u32 = 1000;

/// Which client addresses a per-IP limit holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PerIpRule {
    /// Every address: the limit was set explicitly.
    Every,
    /// Public addresses only, not [shared](is_shared_address) ones: the
    /// default, so that the clients behind a proxy, load balancer or NAT
    /// are not held to one client's share together.
    PublicOnly,
}

impl PerIpRule {
    /// Whether the limit holds the client `ip`.
    fn holds(self, ip: IpAddr) -> bool {
        self == Self::Every || !is_shared_address(ip)
    }
}

/// Admission state shared by the whole server.
#[derive(Debug)]
pub struct Limits {
    max_connections: usize,
    /// Most connections per client (0: no limit), for the clients
    /// `max_per_ip_rule` holds.
    max_per_ip: usize,
    max_per_ip_rule: PerIpRule,
    /// Admitted connections, counted from admission (before the session
    /// registers) so that a burst of upgrades cannot overshoot the cap.
    open: AtomicUsize,
    /// Open connections per client (see [`Limits::key`]); an entry goes
    /// when its count is 0.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Connections not (yet) upgraded, counted from accept.
    http_open: AtomicUsize,
    /// The same per TCP peer (trusted proxies not counted).
    http_per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// The connect rate per client, for the clients `connect_rate_rule`
    /// holds.
    connect_rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    connect_rate_rule: PerIpRule,
    allowed_origins: Vec<String>,
    trusted_proxies: Vec<IpNet>,
    /// The prefix that counts as one IPv6 client.
    ipv6_prefix_len: u8,
    /// A per-IP limit has refused a loopback or private address (warned
    /// about once).
    shared_address_warned: AtomicBool,
}

/// One admitted WebSocket connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    /// The client's key in `per_ip`; `None`: not counted per IP.
    ip: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            release(&self.limits.per_ip, ip);
        }
    }
}

/// The slot of a connection that has not upgraded (yet), from accept until
/// its HTTP part ends: it closes, or it upgrades and holds a [`Permit`].
#[derive(Debug)]
pub struct HttpPermit {
    limits: Arc<Limits>,
    /// The peer's key in `http_per_ip`; `None`: not counted per IP.
    ip: Option<IpAddr>,
}

impl Drop for HttpPermit {
    fn drop(&mut self) {
        self.limits.http_open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            release(&self.limits.http_per_ip, ip);
        }
    }
}

/// Take one from `key`'s count, removing the entry at 0.
fn release(map: &Mutex<HashMap<IpAddr, usize>>, key: IpAddr) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

/// Add one to `key`'s count unless it is at `max`.
fn reserve(map: &Mutex<HashMap<IpAddr, usize>>, key: IpAddr, max: usize) -> bool {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let n = map.entry(key).or_insert(0);
    if *n >= max {
        return false;
    }
    *n += 1;
    true
}

/// What [`Limits`] are built from (`Config::limits` fills it in).
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// Most connections at once (0: no limit).
    pub max_connections: usize,
    /// Most connections from one client IP (0: no limit), for every
    /// address; `None`: [`DEFAULT_MAX_CONNECTIONS_PER_IP`] for public
    /// addresses only.
    pub max_per_ip: Option<usize>,
    /// New connections per second from one client IP (0: no limit), for
    /// every address; `None`: [`DEFAULT_CONNECT_RATE_PER_IP`] for public
    /// addresses only.
    pub connect_rate_per_ip: Option<u32>,
    /// Browser origins allowed (empty: all).
    pub allowed_origins: &'a [String],
    /// Proxies whose `X-Forwarded-For` is believed, as CIDRs or addresses
    /// (ones that do not parse are ignored: validate them first).
    pub trusted_proxies: &'a [String],
    /// Leading bits of an IPv6 address that identify one client (1..=128).
    pub ipv6_prefix_len: u8,
}

impl Limits {
    /// Limits from validated settings.
    pub fn new(settings: Settings<'_>) -> Self {
        let rule = |set: bool| {
            if set {
                PerIpRule::Every
            } else {
                PerIpRule::PublicOnly
            }
        };
        let rate = settings
            .connect_rate_per_ip
            .unwrap_or(DEFAULT_CONNECT_RATE_PER_IP);
        let connect_rate =
            NonZeroU32::new(rate).map(|r| RateLimiter::keyed(Quota::per_second(r).allow_burst(r)));
        Self {
            max_connections: settings.max_connections,
            max_per_ip: settings.max_per_ip.unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP),
            max_per_ip_rule: rule(settings.max_per_ip.is_some()),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            http_open: AtomicUsize::new(0),
            http_per_ip: Mutex::new(HashMap::new()),
            connect_rate,
            connect_rate_rule: rule(settings.connect_rate_per_ip.is_some()),
            allowed_origins: settings
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            trusted_proxies: settings
                .trusted_proxies
                .iter()
                .filter_map(|c| parse_cidr(c).ok())
                .collect(),
            ipv6_prefix_len: settings.ipv6_prefix_len.clamp(1, 128),
            shared_address_warned: AtomicBool::new(false),
        }
    }

    /// Note that `refusal` turned away the client `ip`. The first time a
    /// per-IP limit refuses a loopback or private address (which only a
    /// limit set explicitly does), log why that is probably a set-up
    /// problem: such an address is usually a proxy, load balancer or NAT
    /// that many clients share, and then the per-IP limits cap all of them
    /// together. Returns whether it warned.
    pub fn note_refusal(&self, ip: IpAddr, refusal: Refusal) -> bool {
        let per_ip = matches!(refusal, Refusal::TooManyFromIp | Refusal::ConnectRate { .. });
        if !per_ip || !is_shared_address(ip) || self.shared_address_warned.swap(true, Ordering::Relaxed) {
            return false;
        }
        tracing::warn!(
            %ip,
            reason = refusal.as_str(),
            "a per-IP limit refused {ip}, a loopback or private address: if clients reach this \
             server through a proxy or load balancer there, list it in --trusted-proxy so that \
             X-Forwarded-For names each client; otherwise raise --max-connections-per-ip or \
             --connect-rate-per-ip (0: no limit), or leave them unset (unset, they hold only \
             public addresses). Logged once"
        );
        true
    }

    /// What counts as one client for the per-IP limits: an IPv4 address,
    /// or the first `ipv6_prefix_len` bits of an IPv6 one (the rest zero).
    pub fn key(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX << (128 - u32::from(self.ipv6_prefix_len));
                IpAddr::V6((bits & mask).into())
            }
            v4 => v4,
        }
    }

    /// Count a connection just accepted from `peer` until it upgrades or
    /// closes, or refuse it: not-yet-upgraded connections are held to
    /// `max_connections` in all and `max_connections_per_ip` per peer
    /// (except trusted proxies, which carry many clients, and peers the
    /// per-IP rule does not hold).
    pub fn accept(self: &Arc<Self>, peer: IpAddr) -> Result<HttpPermit, Refusal> {
        let open = self.http_open.fetch_add(1, Ordering::AcqRel);
        if self.max_connections > 0 && open >= self.max_connections {
            self.http_open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::ServerFull);
        }
        let peer = peer.to_canonical();
        let counted = self.max_per_ip > 0 && !self.is_trusted(peer) && self.max_per_ip_rule.holds(peer);
        let ip = counted.then(|| self.key(peer));
        if let Some(ip) = ip
            && !reserve(&self.http_per_ip, ip, self.max_per_ip)
        {
            self.http_open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyFromIp);
        }
        Ok(HttpPermit {
            limits: self.clone(),
            ip,
        })
    }

    /// The client's address: the TCP peer, or, when the peer is a trusted
    /// proxy, the nearest address in `X-Forwarded-For` that is not one.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let mut ip = peer.ip().to_canonical();
        if !self.is_trusted(ip) {
            return ip;
        }
        // Walk from the right: each trusted hop vouches for the one before.
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(addr) => {
                    ip = addr.to_canonical();
                    if !self.is_trusted(ip) {
                        break;
                    }
                }
                // A garbled entry: trust nothing further left.
                Err(_) => break,
            }
        }
        ip
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Check the `Origin` header against the allow-list (empty: all
    /// allowed). Clients that send no Origin (not browsers) are allowed.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if self.allowed_origins.is_empty() {
            return Ok(());
        }
        match headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok()) {
            None => Ok(()),
            Some(o) => {
                let o = o.trim_end_matches('/').to_ascii_lowercase();
                if self.allowed_origins.contains(&o) {
                    Ok(())
                } else {
                    Err(Refusal::Origin)
                }
            }
        }
    }

    /// Admit a WebSocket connection from the client `ip`, or say why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        // The rules judge the address itself: its key may not look like it
        // (`::1` keyed by its /64 is `::`).
        let key = self.key(ip);
        if let Some(rl) = &self.connect_rate
            && self.connect_rate_rule.holds(ip)
            && let Err(not_until) = rl.check_key(&key)
        {
            let retry_after = not_until.wait_time_from(governor::clock::Clock::now(rl.clock()));
            return Err(Refusal::ConnectRate { retry_after });
        }
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if self.max_connections > 0 && open >= self.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::ServerFull);
        }
        let ip = (self.max_per_ip > 0 && self.max_per_ip_rule.holds(ip)).then_some(key);
        if let Some(ip) = ip
            && !reserve(&self.per_ip, ip, self.max_per_ip)
        {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyFromIp);
        }
        Ok(Permit {
            limits: self.clone(),
            ip,
        })
    }

    /// Forget connect-rate state of IPs not seen lately (bounds memory
    /// under a flood of distinct addresses). Call periodically.
    pub fn forget_idle(&self) {
        if let Some(rl) = &self.connect_rate {
            rl.retain_recent();
            rl.shrink_to_fit();
        }
    }
}

/// Loopback, private (RFC 1918, shared CGNAT 100.64/10, IPv6 unique local)
/// or link-local: an address that proxies and NATs share among clients.
/// The per-IP limits hold such an address only when set explicitly.
fn is_shared_address(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let cgnat = v4.octets()[0] == 100 && (v4.octets()[1] & 0xC0) == 64;
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || cgnat
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments()[0];
            v6.is_loopback() || (seg & 0xFE00) == 0xFC00 || (seg & 0xFFC0) == 0xFE80
        }
    }
}

/// Parse `10.0.0.0/8` or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{s}' is not an IP address or CIDR range"))
}

/// Per-connection message rate: a token bucket, plus a count of rejected
/// messages in the current second to spot a client that keeps pushing.
#[derive(Debug)]
pub struct MessageBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    window_start: Instant,
    rejected_in_window: u32,
}

/// What the bucket says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Within the rate.
    Allow,
    /// Over the rate: answer `rate_limited`, do not serve it.
    Reject,
    /// Over the rate again and again (more rejected messages within a
    /// second than the burst): close the connection with 1008.
    Close,
}

impl MessageBucket {
    /// A full bucket; `rate` messages per second, `burst` at once.
    pub fn new(rate: u32, burst: u32) -> Self {
        let now = Instant::now();
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
            window_start: now,
            rejected_in_window: 0,
        }
    }

    /// Take a token for one message.
    pub fn check(&mut self) -> RateVerdict {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return RateVerdict::Allow;
        }
        if now.saturating_duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.rejected_in_window = 0;
        }
        self.rejected_in_window += 1;
        if f64::from(self.rejected_in_window) > self.burst {
            RateVerdict::Close
        } else {
            RateVerdict::Reject
        }
    }
}

/// Raise this process's soft open-file limit to its hard limit (each
/// connection is a file descriptor) and return the limit now in force.
/// The hard limit can only be raised by root (`ulimit -Hn`, or `LimitNOFILE`
/// in a systemd unit), so it is what caps connections per process.
pub fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limits(f: impl FnOnce(&mut Config)) -> Arc<Limits> {
        let mut c = Config::default();
        f(&mut c);
        Arc::new(c.limits())
    }

    #[test]
    fn caps_per_ip_and_global_and_slots_come_back() {
        let l = limits(|c| {
            c.max_connections = 3;
            c.max_connections_per_ip = Some(2);
            c.connect_rate_per_ip = Some(0);
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refusal::TooManyFromIp);
        let _p3 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refusal::ServerFull);
        drop(p1);
        let _p4 = l.admit(a).unwrap();
        assert_eq!(l.per_ip.lock().unwrap().len(), 2);
    }

    #[test]
    fn connect_rate_refuses_with_a_retry_time() {
        let l = limits(|c| c.connect_rate_per_ip = Some(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let _p = (l.admit(a).unwrap(), l.admit(a).unwrap());
        match l.admit(a) {
            Err(Refusal::ConnectRate { retry_after }) => assert!(retry_after <= Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
        // Another IP has its own budget.
        assert!(l.admit("10.0.0.9".parse().unwrap()).is_ok());
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_proxies() {
        let l = limits(|c| c.trusted_proxy = vec!["10.0.0.0/8".into(), "127.0.0.1".into()]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7, 10.1.1.1".parse().unwrap(),
        );
        // From a trusted proxy: the rightmost untrusted hop.
        let via_proxy: SocketAddr = "10.2.2.2:4000".parse().unwrap();
        assert_eq!(
            l.client_ip(via_proxy, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // From anyone else: the header is ignored.
        let direct: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        assert_eq!(l.client_ip(direct, &h), "192.0.2.1".parse::<IpAddr>().unwrap());
        // Garbage stops the walk at the last good hop.
        h.insert("x-forwarded-for", "nonsense, 10.3.3.3".parse().unwrap());
        assert_eq!(l.client_ip(via_proxy, &h), "10.3.3.3".parse::<IpAddr>().unwrap());
        // No trusted proxies configured: never trusted.
        let none = limits(|_| {});
        assert_eq!(
            none.client_ip(via_proxy, &h),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_prefix() {
        let by64 = limits(|_| {});
        let k = |l: &Limits, s: &str| l.key(s.parse().unwrap());
        assert_eq!(k(&by64, "2001:db8:1:2:3:4:5:6"), k(&by64, "2001:db8:1:2::ffff"));
        assert_ne!(k(&by64, "2001:db8:1:2::1"), k(&by64, "2001:db8:1:3::1"));
        assert_eq!(
            k(&by64, "::ffff:192.0.2.1"),
            "192.0.2.1".parse::<IpAddr>().unwrap(),
            "IPv4-mapped is IPv4, never masked"
        );
        let each = limits(|c| c.ipv6_prefix_len = 128);
        assert_ne!(k(&each, "2001:db8::1"), k(&each, "2001:db8::2"));
    }

    #[test]
    fn connections_not_upgraded_have_caps_of_their_own() {
        let l = limits(|c| {
            c.max_connections = 3;
            c.max_connections_per_ip = Some(2);
            c.trusted_proxy = vec!["10.9.9.9".into()];
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let proxy: IpAddr = "10.9.9.9".parse().unwrap();
        let h1 = l.accept(a).unwrap();
        let _h2 = l.accept(a).unwrap();
        assert_eq!(l.accept(a).unwrap_err(), Refusal::TooManyFromIp);
        // A trusted proxy is held to the global cap only.
        let _h3 = l.accept(proxy).unwrap();
        assert_eq!(l.accept(proxy).unwrap_err(), Refusal::ServerFull);
        // Sessions are a pool of their own.
        let _s = (l.admit(a).unwrap(), l.admit(a).unwrap());
        drop(h1);
        let _h4 = l.accept(a).unwrap();
        assert_eq!(l.http_per_ip.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_per_ip_refusal_of_a_shared_address_is_warned_about_once() {
        let l = limits(|_| {});
        let public: IpAddr = "203.0.113.5".parse().unwrap();
        assert!(!l.note_refusal(public, Refusal::TooManyFromIp));
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(!l.note_refusal(proxy, Refusal::ServerFull), "not a per-IP limit");
        assert!(l.note_refusal(proxy, Refusal::TooManyFromIp));
        assert!(!l.note_refusal("127.0.0.1".parse().unwrap(), Refusal::TooManyFromIp));
        for shared in [
            "127.0.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_shared_address(shared.parse().unwrap()), "{shared}");
        }
        for public in ["203.0.113.5", "100.128.0.1", "2001:db8::1", "8.8.8.8"] {
            assert!(!is_shared_address(public.parse().unwrap()), "{public}");
        }
    }

    /// Admit `ip` until the connect rate refuses it, keeping the permits;
    /// returns how many were admitted, which is the burst plus what refilled
    /// meanwhile (at most one a millisecond at the default rate).
    fn burst_of(l: &Arc<Limits>, ip: IpAddr, held: &mut Vec<Permit>) -> usize {
        let started = std::time::Instant::now();
        let mut admitted = 0;
        loop {
            match l.admit(ip) {
                Ok(p) => held.push(p),
                Err(Refusal::ConnectRate { .. }) => break,
                Err(other) => panic!("{ip}: {other:?}"),
            }
            admitted += 1;
            assert!(
                admitted < 10 * DEFAULT_CONNECT_RATE_PER_IP as usize,
                "{ip} is not held"
            );
        }
        let refilled = started.elapsed().as_millis() as usize + 1;
        assert!(
            admitted >= DEFAULT_CONNECT_RATE_PER_IP as usize,
            "{ip}: {admitted}"
        );
        assert!(
            admitted <= DEFAULT_CONNECT_RATE_PER_IP as usize + refilled,
            "{ip}: {admitted}"
        );
        admitted
    }

    /// Unset, the per-IP limits have their defaults for public addresses
    /// and hold no loopback, private, CGNAT or link-local one; set, they
    /// hold every address.
    #[test]
    fn by_default_per_ip_limits_hold_public_addresses_only() {
        const SHARED: [&str; 8] = [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:172.16.0.1",
        ];
        let public: IpAddr = "203.0.113.5".parse().unwrap();
        let mut held = Vec::new();

        // The connect rate: a public client is refused after its burst.
        let l = limits(|_| {});
        burst_of(&l, public, &mut held);
        assert!(
            l.admit("100.128.0.1".parse().unwrap()).is_ok(),
            "next to CGNAT, public"
        );
        for shared in SHARED {
            for _ in 0..2 * DEFAULT_CONNECT_RATE_PER_IP {
                held.push(l.admit(shared.parse().unwrap()).expect(shared));
            }
        }
        held.clear();

        // The connection cap, with the rate off: the same.
        let l = limits(|c| c.connect_rate_per_ip = Some(0));
        for _ in 0..DEFAULT_MAX_CONNECTIONS_PER_IP {
            held.push(l.admit(public).unwrap());
            held.push(l.admit("::1".parse().unwrap()).unwrap());
        }
        assert_eq!(l.admit(public).unwrap_err(), Refusal::TooManyFromIp);
        for shared in SHARED {
            held.push(l.admit(shared.parse().unwrap()).expect(shared));
        }
        assert_eq!(
            l.per_ip.lock().unwrap().len(),
            1,
            "shared addresses are not counted"
        );
        // ... and connections not upgraded, counted by TCP peer.
        let mut accepted = Vec::new();
        for _ in 0..DEFAULT_MAX_CONNECTIONS_PER_IP {
            accepted.push(l.accept(public).unwrap());
        }
        assert_eq!(l.accept(public).unwrap_err(), Refusal::TooManyFromIp);
        for shared in SHARED {
            accepted.push(l.accept(shared.parse().unwrap()).expect(shared));
        }
        assert_eq!(l.http_per_ip.lock().unwrap().len(), 1);
        held.clear();
        accepted.clear();

        // Set explicitly, even to the default values, they hold everyone.
        let l = limits(|c| {
            c.connect_rate_per_ip = Some(DEFAULT_CONNECT_RATE_PER_IP);
            c.max_connections_per_ip = Some(DEFAULT_MAX_CONNECTIONS_PER_IP);
        });
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        burst_of(&l, loopback, &mut held);
        let l = limits(|c| {
            c.connect_rate_per_ip = Some(0);
            c.max_connections_per_ip = Some(1);
        });
        let _one = (
            l.admit("::1".parse().unwrap()).unwrap(),
            l.accept(loopback).unwrap(),
        );
        assert_eq!(
            l.admit("::1".parse().unwrap()).unwrap_err(),
            Refusal::TooManyFromIp
        );
        assert_eq!(l.accept(loopback).unwrap_err(), Refusal::TooManyFromIp);
    }

    #[test]
    fn origin_allow_list() {
        let l = limits(|c| c.allowed_origin = vec!["https://app.example.com/".into()]);
        let mut h = HeaderMap::new();
        assert_eq!(l.check_origin(&h), Ok(()), "no Origin: not a browser");
        h.insert(http::header::ORIGIN, "https://APP.example.com".parse().unwrap());
        assert_eq!(l.check_origin(&h), Ok(()));
        h.insert(http::header::ORIGIN, "https://evil.example.com".parse().unwrap());
        assert_eq!(l.check_origin(&h), Err(Refusal::Origin));
        assert_eq!(limits(|_| {}).check_origin(&h), Ok(()), "empty list allows all");
    }

    #[tokio::test(start_paused = true)]
    async fn message_bucket_rejects_then_closes_a_persistent_flood() {
        let mut b = MessageBucket::new(10, 5);
        for _ in 0..5 {
            assert_eq!(b.check(), RateVerdict::Allow);
        }
        for _ in 0..5 {
            assert_eq!(b.check(), RateVerdict::Reject);
        }
        assert_eq!(b.check(), RateVerdict::Close);
        // After a pause the client is welcome again.
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut b = MessageBucket::new(10, 5);
        for _ in 0..5 {
            b.check();
        }
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(b.check(), RateVerdict::Allow, "3 tokens refilled");
    }
}
