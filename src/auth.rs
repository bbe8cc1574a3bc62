//! Authentication of WebSocket clients with JWTs, and what a token allows.
//!
//! With `--jwt-secret` (HS256) or `--jwt-public-key` (RS256 or ES256), every
//! WebSocket upgrade must carry a valid, unexpired token, or it is refused
//! with 401 before anything is allocated for the connection. The token may
//! come in `?token=`, an `Authorization: Bearer` header, or (for browsers,
//! which cannot set headers) the `Sec-WebSocket-Protocol` header as an
//! offered protocol `bearer.<token>`.
//!
//! Claims: `sub` (the user, shown to other members as `user`), `exp`
//! (required; the connection is closed with 4003 at that time unless the
//! client sends a `refresh` with a newer token), and optional `groups` and
//! `publish` lists of patterns (`chat:*`, `lobby`, `*`) limiting which groups
//! the connection may join and publish to. See `docs/auth.md`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Prefix of the offered subprotocol that carries a token.
pub const PROTOCOL_TOKEN_PREFIX: &str = "bearer.";
/// The subprotocol the server selects when the client offers it.
pub const PROTOCOL: &str = "roomcast";

/// Verifies tokens with one key.
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

/// Why a token was refused (the message goes into the 401 body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token anywhere in the request.
    #[error(
        "missing token: send it as ?token=, an Authorization: Bearer header, or a 'bearer.<token>' subprotocol"
    )]
    Missing,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// Signature, format, algorithm or claims are wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Group patterns from a claim: `None` allows every group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(Option<Vec<Box<str>>>);

impl Patterns {
    /// Whether `group` matches one of the patterns: exact, `prefix*`, or `*`.
    pub fn allows(&self, group: &str) -> bool {
        match &self.0 {
            None => true,
            Some(list) => list.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => group.starts_with(prefix),
                None => **p == *group,
            }),
        }
    }
}

/// What a verified token grants a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The `sub` claim.
    pub user: Option<Arc<str>>,
    /// The `exp` claim, seconds since the Unix epoch.
    pub exp: u64,
    /// Groups the connection may join.
    pub join: Patterns,
    /// Groups the connection may publish to (default: the join patterns).
    pub publish: Patterns,
}

/// The longest a token is honoured from now: 100 years. An `exp` further
/// ahead (up to `u64::MAX` seconds, which no clock can reach) counts as
/// this, so the deadline a session computes from it is always a time the
/// clock and the timer can represent.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Grant {
    /// Time left until expiry: zero if past, at most [`MAX_TOKEN_LIFETIME`].
    pub fn remaining(&self) -> Duration {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Duration::from_secs(self.exp)
            .saturating_sub(now)
            .min(MAX_TOKEN_LIFETIME)
    }

    /// When a session holding this grant since `now` must close: `now` plus
    /// [`Grant::remaining`], or `None` (no expiry) if even that cannot be
    /// represented, so that no `exp` can make the addition overflow.
    pub fn deadline(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        now.checked_add(self.remaining())
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
    groups: Option<Vec<String>>,
    publish: Option<Vec<String>>,
}

/// A verifier that cannot be built from its settings, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting '{key}': {message}")]
pub struct SetupError {
    /// The setting (`jwt_secret` or `jwt_public_key`).
    pub key: &'static str,
    /// Why.
    pub message: String,
}

impl Auth {
    /// The verifier the settings ask for, if any: an HS256 secret or a PEM
    /// public key (RS256 or ES256), not both.
    pub fn from_settings(
        jwt_secret: Option<&str>,
        jwt_public_key: Option<&Path>,
    ) -> Result<Option<Arc<Self>>, SetupError> {
        let err = |key: &'static str, message: String| SetupError { key, message };
        match (jwt_secret, jwt_public_key) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(err(
                "jwt_secret",
                "set either jwt_secret or jwt_public_key, not both".into(),
            )),
            (Some(secret), None) => {
                if secret.len() < 32 {
                    return Err(err("jwt_secret", "must be at least 32 bytes for HS256".into()));
                }
                Ok(Some(Arc::new(Self::new(
                    DecodingKey::from_secret(secret.as_bytes()),
                    &[Algorithm::HS256],
                ))))
            }
            (None, Some(path)) => Self::from_public_key(path)
                .map(|a| Some(Arc::new(a)))
                .map_err(|m| err("jwt_public_key", m)),
        }
    }

    fn from_public_key(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Self::new(key, &[Algorithm::RS256]));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
            return Ok(Self::new(key, &[Algorithm::ES256]));
        }
        Err(format!(
            "{} is not an RSA or EC (P-256) public key in PEM",
            path.display()
        ))
    }

    fn new(key: DecodingKey, algorithms: &[Algorithm]) -> Self {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.to_vec();
        // Expiry is enforced to the second: the session closes at `exp`.
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        Self { key, validation }
    }

    /// Verify `token` and return what it grants.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let c = data.claims;
        let patterns = |l: Option<Vec<String>>| Patterns(l.map(|v| v.into_iter().map(Into::into).collect()));
        let join = patterns(c.groups);
        let publish = match c.publish {
            Some(p) => patterns(Some(p)),
            None => join.clone(),
        };
        Ok(Grant {
            user: c.sub.map(Into::into),
            exp: c.exp,
            join,
            publish,
        })
    }
}

/// Where a request carries its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// The token.
    pub token: String,
    /// The subprotocol to select in the 101 response, when the client
    /// offered subprotocols (browsers fail the connection without one).
    pub protocol: Option<String>,
}

/// Find the token in `?token=`, `Authorization: Bearer`, or an offered
/// `bearer.<token>` subprotocol, in that order.
pub fn presented(query: Option<&str>, headers: &HeaderMap) -> Option<Presented> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let select = |token_protocol: Option<&str>| {
        if offered.contains(&PROTOCOL) {
            Some(PROTOCOL.to_owned())
        } else {
            // Only the token entry itself (a browser that offered just that
            // then accepts the handshake), never a protocol we do not speak.
            token_protocol.map(str::to_owned)
        }
    };
    if let Some(q) = query {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("token=")
                && !v.is_empty()
            {
                let token = percent_decode(v);
                return Some(Presented {
                    token,
                    protocol: (!offered.is_empty()).then(|| select(None)).flatten(),
                });
            }
        }
    }
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && v.len() > 7
        && v.is_char_boundary(7)
        && v[..7].eq_ignore_ascii_case("bearer ")
    {
        let token = &v[7..];
        return Some(Presented {
            token: token.trim().to_owned(),
            protocol: (!offered.is_empty()).then(|| select(None)).flatten(),
        });
    }
    let p = offered.iter().find(|p| p.starts_with(PROTOCOL_TOKEN_PREFIX))?;
    Some(Presented {
        token: p[PROTOCOL_TOKEN_PREFIX.len()..].to_owned(),
        protocol: select(Some(p)),
    })
}

/// Decode `%XX` escapes (a JWT needs none, but clients may escape anyway).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = Patterns(Some(vec!["chat:*".into(), "lobby".into()]));
        assert!(p.allows("chat:1") && p.allows("chat:") && p.allows("lobby"));
        assert!(!p.allows("lobby2") && !p.allows("chat") && !p.allows("admin"));
        assert!(Patterns(Some(vec!["*".into()])).allows("x"));
        assert!(!Patterns(Some(vec![])).allows("x"));
        assert!(Patterns(None).allows("anything"));
    }

    #[test]
    fn an_exp_beyond_any_clock_is_clamped_not_overflowed() {
        let grant = |exp| Grant {
            user: None,
            exp,
            join: Patterns::default(),
            publish: Patterns::default(),
        };
        let now = tokio::time::Instant::now();
        for exp in [u64::MAX, i64::MAX as u64 + 1, i64::MAX as u64] {
            assert_eq!(grant(exp).remaining(), MAX_TOKEN_LIFETIME, "{exp}");
            assert_eq!(grant(exp).deadline(now), Some(now + MAX_TOKEN_LIFETIME), "{exp}");
        }
        assert_eq!(grant(0).remaining(), Duration::ZERO);
        assert_eq!(grant(0).deadline(now), Some(now));
        let soon = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 60;
        assert!(grant(soon).remaining() <= Duration::from_secs(60));
        assert!(grant(soon).remaining() > Duration::from_secs(58));
    }

    #[test]
    fn exp_up_to_u64_max_verifies_and_beyond_it_is_invalid() {
        let secret = "a-test-secret-of-at-least-32-bytes!!";
        let auth = Auth::from_settings(Some(secret), None).unwrap().unwrap();
        let sign = |payload: &str| {
            let raw = serde_json::value::RawValue::from_string(payload.to_owned()).unwrap();
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::HS256),
                &raw,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        let g = auth
            .verify(&sign(r#"{"sub":"ann","exp":18446744073709551615}"#))
            .unwrap();
        assert_eq!((g.exp, g.remaining()), (u64::MAX, MAX_TOKEN_LIFETIME));
        for beyond in ["18446744073709551616", "1e300", "-1"] {
            let t = sign(&format!(r#"{{"sub":"ann","exp":{beyond}}}"#));
            assert!(
                matches!(auth.verify(&t), Err(AuthError::Invalid(_))),
                "{beyond}: {:?}",
                auth.verify(&t)
            );
        }
    }

    #[test]
    fn token_locations() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(Some("a=1&token=abc.def"), &h).unwrap().token, "abc.def");
        h.insert(header::AUTHORIZATION, "Bearer xyz".parse().unwrap());
        assert_eq!(presented(None, &h).unwrap().token, "xyz");
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "roomcast, bearer.t.o.k".parse().unwrap(),
        );
        let p = presented(None, &h).unwrap();
        assert_eq!(
            (p.token.as_str(), p.protocol.as_deref()),
            ("t.o.k", Some("roomcast"))
        );
        let mut h = HeaderMap::new();
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, "bearer.t".parse().unwrap());
        assert_eq!(presented(None, &h).unwrap().protocol.as_deref(), Some("bearer.t"));
        assert_eq!(presented(Some("token="), &HeaderMap::new()), None);
        assert_eq!(percent_decode("a%2Eb+c"), "a.b c");
    }
}
