//! The roomcast wire protocol on top of WebSocket messages (see
//! `docs/protocol.md`): JSON requests in text frames, a compact binary form in
//! binary frames, and the encoding of every server message.
//!
//! Server messages come out as payloads ([`FramePayload`]: the JSON text or
//! the binary type-4 body, with room left in front for a frame header), not
//! frames: how a payload goes on the wire (plain, or compressed for
//! recipients that negotiated it) is decided once per message for all its
//! recipients, by [`crate::prepared`].
//!
//! Decoding borrows from the received message: `data` and `id` stay raw JSON
//! slices, so a publish is never parsed into a value tree nor re-serialized.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::id::ClientId;
use crate::ws::frame::FramePayload;

/// Longest group name, in bytes.
pub const MAX_GROUP_LEN: usize = 128;

/// Binary request types (little-endian u32 at the start of a binary frame).
pub const BIN_JOIN: u32 = 1;
/// Leave a group.
pub const BIN_LEAVE: u32 = 2;
/// Publish to a group.
pub const BIN_PUBLISH: u32 = 3;
/// A message delivered to a member (server to client).
pub const BIN_MESSAGE: u32 = 4;
/// The member may have missed publications to a group (server to client).
pub const BIN_GAP: u32 = 5;
/// Join a group with history, recovering from a position.
pub const BIN_JOIN_RECOVER: u32 = 6;
/// The answer to a binary join of a group with history (server to client).
pub const BIN_JOINED: u32 = 7;
/// A message with its offset, to a member of a group with history
/// (server to client).
pub const BIN_MESSAGE_OFFSET: u32 = 8;
/// Read a group's history.
pub const BIN_HISTORY: u32 = 9;
/// A page of history (server to client).
pub const BIN_HISTORY_PAGE: u32 = 10;

/// Most publications one `history` request returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// Longest epoch accepted in a request.
pub const MAX_EPOCH_LEN: usize = 64;

/// Error codes sent in `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Invalid JSON, unknown type, missing or wrong field, malformed binary frame.
    BadRequest,
    /// A group name breaks the naming rules.
    InvalidGroup,
    /// The connection is in as many groups as allowed.
    TooManyGroups,
    /// `send` to a connection id that is not connected.
    UnknownConnection,
    /// The server could not complete the request (broker failure).
    Internal,
    /// The connection sends faster than its message rate.
    RateLimited,
    /// The connection's token does not allow this group.
    NotAllowed,
    /// A `refresh` token is invalid or expired.
    InvalidToken,
    /// The cluster's broker is down or not answering: the request was not
    /// carried out (a publication was not taken, a subscription not made).
    BrokerUnavailable,
    /// `history` of a group that keeps none.
    NoHistory,
    /// `presence` or `presence_stats` of a group without presence.
    NoPresence,
}

impl ErrorCode {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::InvalidGroup => "invalid_group",
            Self::TooManyGroups => "too_many_groups",
            Self::UnknownConnection => "unknown_connection",
            Self::Internal => "internal",
            Self::RateLimited => "rate_limited",
            Self::NotAllowed => "not_allowed",
            Self::InvalidToken => "invalid_token",
            Self::BrokerUnavailable => "broker_unavailable",
            Self::NoHistory => "no_history",
            Self::NoPresence => "no_presence",
        }
    }
}

/// A request that could not be served: the code, a human message, and the
/// request id to echo when one was readable.
#[derive(Debug, Clone)]
pub struct RequestError<'a> {
    /// Request id (raw JSON number or string), if the request had a valid one.
    pub id: Option<&'a RawValue>,
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: Cow<'static, str>,
}

impl<'a> RequestError<'a> {
    fn new(id: Option<&'a RawValue>, code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            id,
            code,
            message: message.into(),
        }
    }
}

/// A decoded client request. `data` is the raw JSON text of the payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Request<'a> {
    /// Join a group.
    Join {
        /// Group name (validated).
        group: Cow<'a, str>,
        /// Recover what was missed since this position.
        recover: Option<Recover<'a>>,
        /// What the member shows in presence and `joined` events: the JSON
        /// text of an object, as the client wrote it (its size is checked
        /// by the session).
        info: Option<&'a str>,
    },
    /// List a group's members across the cluster.
    Presence {
        /// Group name (validated).
        group: Cow<'a, str>,
    },
    /// Count a group's connections and users across the cluster.
    PresenceStats {
        /// Group name (validated).
        group: Cow<'a, str>,
    },
    /// Read a group's history.
    History {
        /// Group name (validated).
        group: Cow<'a, str>,
        /// Publications after this offset (`None`: the latest ones).
        since: Option<u64>,
        /// At most this many (1 to [`MAX_HISTORY_LIMIT`]; `None`: the most).
        limit: Option<usize>,
    },
    /// Leave a group.
    Leave {
        /// Group name (validated).
        group: Cow<'a, str>,
    },
    /// Publish to a group's members.
    Publish {
        /// Group name (validated).
        group: Cow<'a, str>,
        /// The payload: raw JSON text, or raw bytes for a binary publish.
        data: Data<'a>,
    },
    /// Send to one connection.
    Send {
        /// Target connection id.
        to: Cow<'a, str>,
        /// Raw JSON payload.
        data: &'a str,
    },
    /// Application-level ping.
    Ping,
    /// Replace the connection's token with a newer one.
    Refresh {
        /// The new JWT.
        token: Cow<'a, str>,
    },
}

/// Where a joining member left off: the offset of the last publication it
/// got, in the epoch that offset belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recover<'a> {
    /// Offset of the last publication received.
    pub offset: u64,
    /// Its epoch.
    pub epoch: Cow<'a, str>,
}

/// A publication payload as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data<'a> {
    /// Raw JSON text (from a text frame).
    Json(&'a str),
    /// Raw bytes (from a binary frame).
    Binary(&'a [u8]),
}

/// A text request with its id.
#[derive(Debug, Clone)]
pub struct TextRequest<'a> {
    /// Raw id to echo in the reply, if the request had one.
    pub id: Option<&'a RawValue>,
    /// The request.
    pub request: Request<'a>,
}

/// The union of all request fields; which ones must be present depends on
/// `type`, checked after parsing so errors can name the field and echo `id`.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    group: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    to: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    recover: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    limit: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    info: Option<&'a RawValue>,
}

/// `recover`'s value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverField<'a> {
    offset: u64,
    #[serde(borrow)]
    epoch: Cow<'a, str>,
}

/// An optional non-negative integer field, or a `bad_request` naming it.
fn number_field<'a>(
    id: Option<&'a RawValue>,
    raw: Option<&'a RawValue>,
    field: &'static str,
) -> Result<Option<u64>, RequestError<'a>> {
    raw.map(|r| {
        serde_json::from_str::<u64>(r.get()).map_err(|_| {
            RequestError::new(
                id,
                ErrorCode::BadRequest,
                format!("field '{field}' must be a non-negative integer"),
            )
        })
    })
    .transpose()
}

fn recover_field<'a>(
    id: Option<&'a RawValue>,
    raw: Option<&'a RawValue>,
) -> Result<Option<Recover<'a>>, RequestError<'a>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let r: RecoverField<'a> = serde_json::from_str(raw.get()).map_err(|_| {
        RequestError::new(
            id,
            ErrorCode::BadRequest,
            "field 'recover' must be {\"offset\":<non-negative integer>,\"epoch\":\"<string>\"}",
        )
    })?;
    if r.epoch.len() > MAX_EPOCH_LEN {
        return Err(RequestError::new(
            id,
            ErrorCode::BadRequest,
            format!("field 'recover.epoch' is longer than {MAX_EPOCH_LEN} bytes"),
        ));
    }
    Ok(Some(Recover {
        offset: r.offset,
        epoch: r.epoch,
    }))
}

/// `info`: a JSON object, or a `bad_request`.
fn info_field<'a>(
    id: Option<&'a RawValue>,
    raw: Option<&'a RawValue>,
) -> Result<Option<&'a str>, RequestError<'a>> {
    match raw.map(RawValue::get) {
        Some(r) if !r.starts_with('{') => Err(RequestError::new(
            id,
            ErrorCode::BadRequest,
            "field 'info' must be a JSON object",
        )),
        r => Ok(r),
    }
}

fn limit_field<'a>(
    id: Option<&'a RawValue>,
    raw: Option<&'a RawValue>,
) -> Result<Option<usize>, RequestError<'a>> {
    match number_field(id, raw, "limit")? {
        Some(n) if n == 0 || n > MAX_HISTORY_LIMIT as u64 => Err(RequestError::new(
            id,
            ErrorCode::BadRequest,
            format!("field 'limit' must be between 1 and {MAX_HISTORY_LIMIT}"),
        )),
        n => Ok(n.map(|n| n as usize)),
    }
}

/// Keep a present field (even `null`) as `Some(raw)`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A raw JSON value as a string, or a `bad_request` naming `field`.
fn string_field<'a>(
    id: Option<&'a RawValue>,
    raw: Option<&'a RawValue>,
    field: &'static str,
) -> Result<Cow<'a, str>, RequestError<'a>> {
    let raw =
        raw.ok_or_else(|| RequestError::new(id, ErrorCode::BadRequest, format!("missing field '{field}'")))?;
    let wrong = || {
        RequestError::new(
            id,
            ErrorCode::BadRequest,
            format!("field '{field}' must be a string"),
        )
    };
    if !raw.get().starts_with('"') {
        return Err(wrong());
    }
    // Borrow when the string has no escapes, allocate only when it does.
    let s: Cow<'a, str> = serde_json::from_str(raw.get()).map_err(|_| wrong())?;
    Ok(s)
}

/// Check a group name: 1 to 128 bytes of UTF-8 without control characters.
pub fn validate_group(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("group name is empty");
    }
    if name.len() > MAX_GROUP_LEN {
        return Err("group name is longer than 128 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("group name contains a control character");
    }
    Ok(())
}

fn group_field<'a>(
    id: Option<&'a RawValue>,
    raw: Option<&'a RawValue>,
) -> Result<Cow<'a, str>, RequestError<'a>> {
    let g = string_field(id, raw, "group")?;
    validate_group(&g).map_err(|m| RequestError::new(id, ErrorCode::InvalidGroup, m))?;
    Ok(g)
}

/// Decode a JSON request from a text message.
pub fn parse_text(text: &str) -> Result<TextRequest<'_>, RequestError<'_>> {
    // Serde would also accept an array as a struct; the protocol wants objects.
    if !text.trim_start().starts_with('{') {
        return Err(RequestError::new(
            None,
            ErrorCode::BadRequest,
            if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                "request must be a JSON object with a string 'type'"
            } else {
                "invalid JSON"
            },
        ));
    }
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        let what = if e.is_data() {
            "request must be a JSON object with a string 'type'"
        } else {
            "invalid JSON"
        };
        RequestError::new(None, ErrorCode::BadRequest, format!("{what}: {e}"))
    })?;
    let id = match env.id {
        Some(raw)
            if raw.get().starts_with('"')
                || raw
                    .get()
                    .starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) =>
        {
            Some(raw)
        }
        Some(_) => {
            return Err(RequestError::new(
                None,
                ErrorCode::BadRequest,
                "field 'id' must be a number or a string",
            ));
        }
        None => None,
    };
    let kind = string_field(id, env.kind, "type")?;
    let data = |field| {
        env.data
            .map(RawValue::get)
            .ok_or_else(|| RequestError::new(id, ErrorCode::BadRequest, format!("missing field '{field}'")))
    };
    let request = match kind.as_ref() {
        "join" => Request::Join {
            group: group_field(id, env.group)?,
            recover: recover_field(id, env.recover)?,
            info: info_field(id, env.info)?,
        },
        "presence" => Request::Presence {
            group: group_field(id, env.group)?,
        },
        "presence_stats" => Request::PresenceStats {
            group: group_field(id, env.group)?,
        },
        "history" => Request::History {
            group: group_field(id, env.group)?,
            since: number_field(id, env.since, "since")?,
            limit: limit_field(id, env.limit)?,
        },
        "leave" => Request::Leave {
            group: group_field(id, env.group)?,
        },
        "publish" => Request::Publish {
            group: group_field(id, env.group)?,
            data: Data::Json(data("data")?),
        },
        "send" => Request::Send {
            to: string_field(id, env.to, "to")?,
            data: data("data")?,
        },
        "ping" => Request::Ping,
        "refresh" => Request::Refresh {
            token: string_field(id, env.token, "token")?,
        },
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(RequestError::new(
                id,
                ErrorCode::BadRequest,
                format!("unknown type '{shown}'"),
            ));
        }
    };
    Ok(TextRequest { id, request })
}

fn binary_group(bytes: &[u8]) -> Result<Cow<'_, str>, RequestError<'static>> {
    let g = std::str::from_utf8(bytes)
        .map_err(|_| RequestError::new(None, ErrorCode::InvalidGroup, "group name is not valid UTF-8"))?;
    validate_group(g).map_err(|m| RequestError::new(None, ErrorCode::InvalidGroup, m))?;
    Ok(Cow::Borrowed(g))
}

/// Decode a binary request: a little-endian u32 type, then its payload.
pub fn parse_binary(frame: &[u8]) -> Result<Request<'_>, RequestError<'static>> {
    let bad = |m: &'static str| RequestError::new(None, ErrorCode::BadRequest, m);
    if frame.len() < 4 {
        return Err(bad("binary frame shorter than its 4-byte type"));
    }
    let kind = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
    let payload = &frame[4..];
    match kind {
        BIN_JOIN => Ok(Request::Join {
            group: binary_group(payload)?,
            recover: None,
            info: None,
        }),
        BIN_JOIN_RECOVER => {
            // offset (u64), epoch length (u8), epoch, group
            if payload.len() < 9 {
                return Err(bad(
                    "binary recovering join shorter than its offset and epoch length",
                ));
            }
            let offset = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
            let len = payload[8] as usize;
            let rest = &payload[9..];
            if rest.len() < len || len > MAX_EPOCH_LEN {
                return Err(bad("binary recovering join with a bad epoch length"));
            }
            let epoch =
                std::str::from_utf8(&rest[..len]).map_err(|_| bad("binary epoch is not valid UTF-8"))?;
            Ok(Request::Join {
                group: binary_group(&rest[len..])?,
                recover: Some(Recover {
                    offset,
                    epoch: Cow::Borrowed(epoch),
                }),
                info: None,
            })
        }
        BIN_HISTORY => {
            // flags (u8; 1: since is set), since (u64), limit (u32; 0: the most), group
            if payload.len() < 13 {
                return Err(bad(
                    "binary history request shorter than its flags, since and limit",
                ));
            }
            let since =
                (payload[0] & 1 == 1).then(|| u64::from_le_bytes(payload[1..9].try_into().expect("8 bytes")));
            let limit = u32::from_le_bytes(payload[9..13].try_into().expect("4 bytes")) as usize;
            if limit > MAX_HISTORY_LIMIT {
                return Err(bad("binary history limit above 1000"));
            }
            Ok(Request::History {
                group: binary_group(&payload[13..])?,
                since,
                limit: (limit > 0).then_some(limit),
            })
        }
        BIN_LEAVE => Ok(Request::Leave {
            group: binary_group(payload)?,
        }),
        BIN_PUBLISH => {
            let (&len, rest) = payload
                .split_first()
                .ok_or_else(|| bad("binary publish without a group length"))?;
            let len = len as usize;
            if rest.len() < len {
                return Err(bad("binary publish shorter than its group length"));
            }
            let (g, message) = rest.split_at(len);
            Ok(Request::Publish {
                group: binary_group(g)?,
                data: Data::Binary(message),
            })
        }
        _ => Err(bad("unknown binary frame type")),
    }
}

// ---- server messages (payloads) ----

fn json_str(out: &mut FramePayload, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to memory cannot fail");
}

/// `{"type":"welcome","conn":"<id>"}`
pub fn welcome(conn: &ClientId) -> FramePayload {
    let mut s = String::with_capacity(48);
    let _ = write!(s, r#"{{"type":"welcome","conn":"{conn}"}}"#);
    let mut out = FramePayload::with_capacity(s.len());
    out.extend_from_slice(s.as_bytes());
    out
}

/// `{"type":"ack","id":<id>}`
pub fn ack(id: &RawValue) -> FramePayload {
    reply("ack", Some(id))
}

/// `{"type":"pong","id":<id>}` (no id if the ping had none).
pub fn pong(id: Option<&RawValue>) -> FramePayload {
    reply("pong", id)
}

fn reply(kind: &str, id: Option<&RawValue>) -> FramePayload {
    let mut out = FramePayload::with_capacity(32);
    out.extend_from_slice(br#"{"type":""#);
    out.extend_from_slice(kind.as_bytes());
    out.push(b'"');
    if let Some(id) = id {
        out.extend_from_slice(br#","id":"#);
        out.extend_from_slice(id.get().as_bytes());
    }
    out.push(b'}');
    out
}

/// `{"type":"left","group":"<group>","reason":"<text>"}`: the server took
/// the connection out of a group (a refreshed token no longer allows it).
pub fn left(group: &str, reason: &str) -> FramePayload {
    let mut out = FramePayload::with_capacity(48 + group.len() + reason.len());
    out.extend_from_slice(br#"{"type":"left","group":"#);
    json_str(&mut out, group);
    out.extend_from_slice(br#","reason":"#);
    json_str(&mut out, reason);
    out.push(b'}');
    out
}

/// `{"type":"presence","id":<id>,"group":"G","connections":N,"users":U,
/// "truncated":false,"members":[<member>,...]}`: each member is the JSON
/// object its node stored (`{"conn":..,"user":..,"node":..,"info":..}`),
/// copied as it is.
pub fn presence_json<'a>(
    id: Option<&RawValue>,
    group: &str,
    connections: u64,
    users: u64,
    truncated: bool,
    members: impl Iterator<Item = &'a [u8]>,
) -> FramePayload {
    let mut out = FramePayload::with_capacity(256);
    out.extend_from_slice(br#"{"type":"presence""#);
    if let Some(id) = id {
        out.extend_from_slice(br#","id":"#);
        out.extend_from_slice(id.get().as_bytes());
    }
    out.extend_from_slice(br#","group":"#);
    json_str(&mut out, group);
    let mut s = String::with_capacity(64);
    let _ = write!(
        s,
        r#","connections":{connections},"users":{users},"truncated":{truncated},"members":["#
    );
    out.extend_from_slice(s.as_bytes());
    for (n, m) in members.enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
    out.extend_from_slice(b"]}");
    out
}

/// `{"type":"presence_stats","id":<id>,"group":"G","connections":N,"users":U}`
pub fn presence_stats_json(id: Option<&RawValue>, group: &str, connections: u64, users: u64) -> FramePayload {
    let mut out = FramePayload::with_capacity(96 + group.len());
    out.extend_from_slice(br#"{"type":"presence_stats""#);
    if let Some(id) = id {
        out.extend_from_slice(br#","id":"#);
        out.extend_from_slice(id.get().as_bytes());
    }
    out.extend_from_slice(br#","group":"#);
    json_str(&mut out, group);
    let mut s = String::with_capacity(48);
    let _ = write!(s, r#","connections":{connections},"users":{users}}}"#);
    out.extend_from_slice(s.as_bytes());
    out
}

/// A member as presence lists it: `{"conn":"<id>","user":"<sub>",
/// "node":"<node>","info":<info>}` (`user` and `info` only when there are
/// some). `info` must be a JSON object.
pub fn presence_member(conn: &ClientId, user: Option<&str>, node: &str, info: Option<&str>) -> Vec<u8> {
    let mut out = FramePayload::with_capacity(64 + info.map_or(0, str::len));
    let mut s = String::with_capacity(48);
    let _ = write!(s, r#"{{"conn":"{conn}""#);
    out.extend_from_slice(s.as_bytes());
    if let Some(user) = user {
        out.extend_from_slice(br#","user":"#);
        json_str(&mut out, user);
    }
    out.extend_from_slice(br#","node":"#);
    json_str(&mut out, node);
    if let Some(info) = info {
        out.extend_from_slice(br#","info":"#);
        out.extend_from_slice(info.as_bytes());
    }
    out.push(b'}');
    out.to_vec()
}

/// The event members of a group with join/leave events get when a user (or
/// a connection without one) joins: `{"type":"joined","group":"G",
/// "conn":"<id>","user":"<sub>","info":<info>}`, or leaves: `{"type":"left",
/// "group":"G","conn":"<id>","user":"<sub>"}`. Unlike the `left` notice
/// ([`left`]), which has a `reason` and concerns the receiving connection,
/// an event names the connection it is about in `conn`.
pub fn presence_event(
    joined: bool,
    group: &str,
    conn: &ClientId,
    user: Option<&str>,
    info: Option<&str>,
) -> Vec<u8> {
    let mut out = FramePayload::with_capacity(80 + group.len() + info.map_or(0, str::len));
    out.extend_from_slice(if joined {
        br#"{"type":"joined","group":"#
    } else {
        br#"{"type":"left","group":"#
    });
    json_str(&mut out, group);
    let mut s = String::with_capacity(48);
    let _ = write!(s, r#","conn":"{conn}""#);
    out.extend_from_slice(s.as_bytes());
    if let Some(user) = user {
        out.extend_from_slice(br#","user":"#);
        json_str(&mut out, user);
    }
    if let (true, Some(info)) = (joined, info) {
        out.extend_from_slice(br#","info":"#);
        out.extend_from_slice(info.as_bytes());
    }
    out.push(b'}');
    out.to_vec()
}

/// `{"type":"error","id":<id>,"code":"<code>","message":"<text>"}`
pub fn error(e: &RequestError<'_>) -> FramePayload {
    let mut out = FramePayload::with_capacity(64 + e.message.len());
    out.extend_from_slice(br#"{"type":"error""#);
    if let Some(id) = e.id {
        out.extend_from_slice(br#","id":"#);
        out.extend_from_slice(id.get().as_bytes());
    }
    out.extend_from_slice(br#","code":""#);
    out.extend_from_slice(e.code.as_str().as_bytes());
    out.extend_from_slice(br#"","message":"#);
    json_str(&mut out, &e.message);
    out.push(b'}');
    out
}

/// `{"type":"message","group":"G","offset":N,"from":"<id>","user":"<sub>","data":<data>}`;
/// `group` is absent for a direct message, `offset` when the group keeps
/// no history, `from` for a server-side
/// publication, `user` when the publisher did not authenticate.
/// `data` must be valid JSON text.
pub fn message_json(
    group: Option<&str>,
    offset: Option<u64>,
    from: Option<&ClientId>,
    user: Option<&str>,
    data: &[u8],
) -> FramePayload {
    let mut out = FramePayload::with_capacity(48 + group.map_or(0, str::len) + data.len());
    out.extend_from_slice(br#"{"type":"message""#);
    if let Some(g) = group {
        out.extend_from_slice(br#","group":"#);
        json_str(&mut out, g);
    }
    if let Some(o) = offset {
        let mut s = String::with_capacity(32);
        let _ = write!(s, r#","offset":{o}"#);
        out.extend_from_slice(s.as_bytes());
    }
    if let Some(from) = from {
        let mut s = String::with_capacity(32);
        let _ = write!(s, r#","from":"{from}""#);
        out.extend_from_slice(s.as_bytes());
    }
    if let Some(user) = user {
        out.extend_from_slice(br#","user":"#);
        json_str(&mut out, user);
    }
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(data);
    out.push(b'}');
    out
}

/// `{"type":"gap","group":"<group>"}`: this node's subscription to the
/// group was interrupted (its broker connection was lost and is back), so
/// the member may have missed publications.
pub fn gap_json(group: &str) -> FramePayload {
    let mut out = FramePayload::with_capacity(24 + group.len());
    out.extend_from_slice(br#"{"type":"gap","group":"#);
    json_str(&mut out, group);
    out.push(b'}');
    out
}

/// Binary gap: type 5 (LE u32), group length, group.
pub fn gap_binary(group: &str) -> FramePayload {
    debug_assert!(group.len() <= MAX_GROUP_LEN);
    let mut out = FramePayload::with_capacity(5 + group.len());
    out.extend_from_slice(&BIN_GAP.to_le_bytes());
    out.push(group.len() as u8);
    out.extend_from_slice(group.as_bytes());
    out
}

/// Binary delivery: type 4 (LE u32), group length, group, message bytes;
/// with an offset, type 8 and the offset (LE u64) before the bytes.
pub fn message_binary(group: &str, offset: Option<u64>, data: &[u8]) -> FramePayload {
    debug_assert!(group.len() <= MAX_GROUP_LEN);
    let mut out = FramePayload::with_capacity(13 + group.len() + data.len());
    let kind = if offset.is_some() {
        BIN_MESSAGE_OFFSET
    } else {
        BIN_MESSAGE
    };
    out.extend_from_slice(&kind.to_le_bytes());
    out.push(group.len() as u8);
    out.extend_from_slice(group.as_bytes());
    if let Some(o) = offset {
        out.extend_from_slice(&o.to_le_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// The answer to a join of a group with history: `{"type":"ack","id":<id>,
/// "offset":N,"epoch":"E"}`, with `"recovered":true|false` when the join
/// asked to recover.
pub fn join_ack(id: &RawValue, offset: u64, epoch: &str, recovered: Option<bool>) -> FramePayload {
    let mut out = FramePayload::with_capacity(80 + epoch.len());
    out.extend_from_slice(br#"{"type":"ack","id":"#);
    out.extend_from_slice(id.get().as_bytes());
    let mut s = String::with_capacity(32);
    let _ = write!(s, r#","offset":{offset},"epoch":"#);
    out.extend_from_slice(s.as_bytes());
    json_str(&mut out, epoch);
    if let Some(r) = recovered {
        out.extend_from_slice(if r {
            br#","recovered":true"#
        } else {
            br#","recovered":false"#
        });
    }
    out.push(b'}');
    out
}

/// Binary join answer: type 7, recovered (u8: 0 no, 1 yes, 2 not asked),
/// offset (LE u64), epoch length (u8), epoch, group.
pub fn joined_binary(group: &str, offset: u64, epoch: &str, recovered: Option<bool>) -> FramePayload {
    let epoch = &epoch.as_bytes()[..epoch.len().min(255)];
    let mut out = FramePayload::with_capacity(14 + epoch.len() + group.len());
    out.extend_from_slice(&BIN_JOINED.to_le_bytes());
    out.push(match recovered {
        Some(false) => 0,
        Some(true) => 1,
        None => 2,
    });
    out.extend_from_slice(&offset.to_le_bytes());
    out.push(epoch.len() as u8);
    out.extend_from_slice(epoch);
    out.extend_from_slice(group.as_bytes());
    out
}

/// One publication in a history answer.
#[derive(Debug, Clone, Copy)]
pub struct HistoryItem<'a> {
    /// Its offset.
    pub offset: u64,
    /// The publishing connection, if a client published it.
    pub from: Option<&'a ClientId>,
    /// The publisher's user.
    pub user: Option<&'a str>,
    /// JSON text (`false`) or raw bytes (`true`).
    pub binary: bool,
    /// The payload.
    pub data: &'a [u8],
}

/// Where a group's history stands, for a history answer.
#[derive(Debug, Clone, Copy)]
pub struct HistoryHead<'a> {
    /// The group.
    pub group: &'a str,
    /// Offset of its latest publication.
    pub offset: u64,
    /// The epoch.
    pub epoch: &'a str,
    /// Nothing is missing between `since` and the first item.
    pub complete: bool,
    /// More items follow the last one.
    pub more: bool,
}

/// `{"type":"history","id":<id>,"group":"G","offset":N,"epoch":"E",
/// "complete":true,"more":false,"publications":[{"offset":1,"from":"..",
/// "user":"..","data":<json>} or {"offset":2,"binary":"<base64>"},...]}`
pub fn history_json(
    id: Option<&RawValue>,
    head: &HistoryHead<'_>,
    items: &[HistoryItem<'_>],
) -> FramePayload {
    use base64::Engine as _;
    let size: usize = items.iter().map(|i| i.data.len() * 4 / 3 + 64).sum();
    let mut out = FramePayload::with_capacity(128 + size);
    out.extend_from_slice(br#"{"type":"history""#);
    if let Some(id) = id {
        out.extend_from_slice(br#","id":"#);
        out.extend_from_slice(id.get().as_bytes());
    }
    out.extend_from_slice(br#","group":"#);
    json_str(&mut out, head.group);
    let mut s = String::with_capacity(32);
    let _ = write!(s, r#","offset":{},"epoch":"#, head.offset);
    out.extend_from_slice(s.as_bytes());
    json_str(&mut out, head.epoch);
    out.extend_from_slice(if head.complete {
        br#","complete":true"#
    } else {
        br#","complete":false"#
    });
    out.extend_from_slice(if head.more {
        br#","more":true"#
    } else {
        br#","more":false"#
    });
    out.extend_from_slice(br#","publications":["#);
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        s.clear();
        let _ = write!(s, r#"{{"offset":{}"#, item.offset);
        if let Some(from) = item.from {
            let _ = write!(s, r#","from":"{from}""#);
        }
        out.extend_from_slice(s.as_bytes());
        if let Some(user) = item.user {
            out.extend_from_slice(br#","user":"#);
            json_str(&mut out, user);
        }
        if item.binary {
            out.extend_from_slice(br#","binary":""#);
            let b64 = base64::engine::general_purpose::STANDARD.encode(item.data);
            out.extend_from_slice(b64.as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(br#","data":"#);
            out.extend_from_slice(item.data);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// Binary history page: type 10, flags (u8: 1 complete, 2 more), offset
/// (LE u64), epoch length (u8), epoch, group length (u8), group, count
/// (LE u32), then per publication: offset (LE u64), kind (u8: 0 JSON
/// text, 1 bytes), length (LE u32), payload.
pub fn history_binary(head: &HistoryHead<'_>, items: &[HistoryItem<'_>]) -> FramePayload {
    let epoch = &head.epoch.as_bytes()[..head.epoch.len().min(255)];
    let size: usize = items.iter().map(|i| 13 + i.data.len()).sum();
    let mut out = FramePayload::with_capacity(24 + epoch.len() + head.group.len() + size);
    out.extend_from_slice(&BIN_HISTORY_PAGE.to_le_bytes());
    out.push(u8::from(head.complete) | (u8::from(head.more) << 1));
    out.extend_from_slice(&head.offset.to_le_bytes());
    out.push(epoch.len() as u8);
    out.extend_from_slice(epoch);
    out.push(head.group.len() as u8);
    out.extend_from_slice(head.group.as_bytes());
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for item in items {
        out.extend_from_slice(&item.offset.to_le_bytes());
        out.push(u8::from(item.binary));
        out.extend_from_slice(&(item.data.len() as u32).to_le_bytes());
        out.extend_from_slice(item.data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(p: &FramePayload) -> &str {
        std::str::from_utf8(p).unwrap()
    }

    #[test]
    fn parses_every_request() {
        let r = parse_text(r#"{"type":"join","group":"lobby","id":1}"#).unwrap();
        assert_eq!(r.id.unwrap().get(), "1");
        assert_eq!(
            r.request,
            Request::Join {
                group: "lobby".into(),
                recover: None,
                info: None,
            }
        );
        let r = parse_text(r#"{"type":"join","group":"g","info":{"name":"Ann"}}"#).unwrap();
        let Request::Join { info: Some(info), .. } = r.request else {
            panic!("{:?}", r.request)
        };
        assert_eq!(info, r#"{"name":"Ann"}"#);
        let e = parse_text(r#"{"type":"join","group":"g","info":"Ann","id":2}"#).unwrap_err();
        assert_eq!((e.code, e.id.unwrap().get()), (ErrorCode::BadRequest, "2"));
        assert_eq!(
            parse_text(r#"{"type":"presence","group":"g"}"#).unwrap().request,
            Request::Presence { group: "g".into() }
        );
        assert_eq!(
            parse_text(r#"{"type":"presence_stats","group":"g"}"#)
                .unwrap()
                .request,
            Request::PresenceStats { group: "g".into() }
        );
        let r = parse_text(r#"{"type":"publish","group":"a\nb","data":{"x":[1, 2]},"id":"q"}"#).unwrap_err();
        assert_eq!((r.code, r.id.unwrap().get()), (ErrorCode::InvalidGroup, r#""q""#));
        let r = parse_text(r#"{"type":"publish","group":"g\u00e9","data":{"x":[1, 2]}}"#).unwrap();
        assert_eq!(
            r.request,
            Request::Publish {
                group: "gé".into(),
                data: Data::Json(r#"{"x":[1, 2]}"#)
            }
        );
        let r = parse_text(r#"{"type":"publish","group":"g","data":null}"#).unwrap();
        assert_eq!(
            r.request,
            Request::Publish {
                group: "g".into(),
                data: Data::Json("null")
            }
        );
        let r = parse_text(r#"{"type":"send","to":"17","data":"hi"}"#).unwrap();
        assert_eq!(
            r.request,
            Request::Send {
                to: "17".into(),
                data: r#""hi""#
            }
        );
        assert_eq!(
            parse_text(r#"{"type":"ping","id":4}"#).unwrap().request,
            Request::Ping
        );
    }

    #[test]
    fn bad_requests_name_the_problem_and_keep_the_id() {
        let cases = [
            ("not json", None, "invalid JSON"),
            ("[1,2]", None, "must be a JSON object"),
            (r#"{"id":5}"#, Some("5"), "missing field 'type'"),
            (r#"{"type":"dance","id":5}"#, Some("5"), "unknown type 'dance'"),
            (r#"{"type":"join","id":5}"#, Some("5"), "missing field 'group'"),
            (
                r#"{"type":"join","group":7,"id":5}"#,
                Some("5"),
                "must be a string",
            ),
            (
                r#"{"type":"publish","group":"g","id":5}"#,
                Some("5"),
                "missing field 'data'",
            ),
            (
                r#"{"type":"send","data":1,"id":5}"#,
                Some("5"),
                "missing field 'to'",
            ),
            (
                r#"{"type":"ping","id":{}}"#,
                None,
                "'id' must be a number or a string",
            ),
            (r#"{"type":7,"id":8}"#, Some("8"), "field 'type' must be a string"),
        ];
        for (text, id, msg) in cases {
            let e = parse_text(text).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{text}");
            assert_eq!(e.id.map(RawValue::get), id, "{text}");
            assert!(e.message.contains(msg), "{text}: {}", e.message);
        }
        let long = format!(r#"{{"type":"join","group":"{}"}}"#, "x".repeat(129));
        assert_eq!(parse_text(&long).unwrap_err().code, ErrorCode::InvalidGroup);
        let empty = r#"{"type":"join","group":""}"#;
        assert_eq!(parse_text(empty).unwrap_err().code, ErrorCode::InvalidGroup);
    }

    #[test]
    fn binary_requests() {
        assert_eq!(
            parse_binary(b"\x01\0\0\0g").unwrap(),
            Request::Join {
                group: "g".into(),
                recover: None,
                info: None,
            }
        );
        assert_eq!(
            parse_binary(b"\x02\0\0\0g").unwrap(),
            Request::Leave { group: "g".into() }
        );
        assert_eq!(
            parse_binary(b"\x03\0\0\0\x02abhello").unwrap(),
            Request::Publish {
                group: "ab".into(),
                data: Data::Binary(b"hello")
            }
        );
        for (bad, code) in [
            (&b"\x01\0\0"[..], ErrorCode::BadRequest),
            (b"\x09\0\0\0g", ErrorCode::BadRequest),
            (b"\x03\0\0\0", ErrorCode::BadRequest),
            (b"\x03\0\0\0\x05ab", ErrorCode::BadRequest),
            (b"\x01\0\0\0\xff", ErrorCode::InvalidGroup),
            (b"\x01\0\0\0", ErrorCode::InvalidGroup),
            (b"\x03\0\0\0\x00hi", ErrorCode::InvalidGroup),
        ] {
            assert_eq!(parse_binary(bad).unwrap_err().code, code, "{bad:?}");
        }
    }

    #[test]
    fn encodes_server_frames() {
        let id = RawValue::from_string("\"a\"".into()).unwrap();
        assert_eq!(payload(&ack(&id)), r#"{"type":"ack","id":"a"}"#);
        assert_eq!(payload(&pong(None)), r#"{"type":"pong"}"#);
        let id42 = ClientId { node: None, conn: 42 };
        assert_eq!(payload(&welcome(&id42)), r#"{"type":"welcome","conn":"42"}"#);
        let remote = ClientId::parse("n-1.9").unwrap();
        assert_eq!(payload(&welcome(&remote)), r#"{"type":"welcome","conn":"n-1.9"}"#);
        assert_eq!(payload(&gap_json("g\"")), r#"{"type":"gap","group":"g\""}"#);
        assert_eq!(&gap_binary("ab")[..], b"\x05\0\0\0\x02ab");
        let e = RequestError::new(Some(&id), ErrorCode::TooManyGroups, "say \"no\"");
        let v: serde_json::Value = serde_json::from_str(payload(&error(&e))).unwrap();
        assert_eq!(v["code"], "too_many_groups");
        assert_eq!(v["message"], "say \"no\"");
        let m = message_json(
            Some("g\"1"),
            None,
            Some(&ClientId { node: None, conn: 7 }),
            None,
            br#"{"k":1}"#,
        );
        let v: serde_json::Value = serde_json::from_str(payload(&m)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"message","group":"g\"1","from":"7","data":{"k":1}})
        );
        let b = message_binary("ab", None, b"xyz");
        assert_eq!(&b[..], b"\x04\0\0\0\x02abxyz");
        let b = message_binary("ab", Some(1), b"xyz");
        assert_eq!(&b[..], b"\x08\0\0\0\x02ab\x01\0\0\0\0\0\0\0xyz");
        let m = message_json(Some("g"), Some(9), None, None, b"1");
        assert_eq!(
            payload(&m),
            r#"{"type":"message","group":"g","offset":9,"data":1}"#
        );
        assert_eq!(
            payload(&join_ack(&id, 3, "e\"", Some(true))),
            r#"{"type":"ack","id":"a","offset":3,"epoch":"e\"","recovered":true}"#
        );
        let conn = ClientId::parse("n1.5").unwrap();
        let m = presence_member(&conn, Some("ann"), "n1", Some(r#"{"a":1}"#));
        assert_eq!(
            std::str::from_utf8(&m).unwrap(),
            r#"{"conn":"n1.5","user":"ann","node":"n1","info":{"a":1}}"#
        );
        let p = presence_json(Some(&id), "g", 2, 1, true, [&m[..], b"{}"].into_iter());
        assert_eq!(
            payload(&p),
            r#"{"type":"presence","id":"a","group":"g","connections":2,"users":1,"truncated":true,"members":[{"conn":"n1.5","user":"ann","node":"n1","info":{"a":1}},{}]}"#
        );
        assert_eq!(
            payload(&presence_stats_json(None, "g", 3, 2)),
            r#"{"type":"presence_stats","group":"g","connections":3,"users":2}"#
        );
        let e = presence_event(true, "g", &conn, None, Some("{}"));
        assert_eq!(
            std::str::from_utf8(&e).unwrap(),
            r#"{"type":"joined","group":"g","conn":"n1.5","info":{}}"#
        );
        let e = presence_event(false, "g", &conn, Some("u"), Some("{}"));
        assert_eq!(
            std::str::from_utf8(&e).unwrap(),
            r#"{"type":"left","group":"g","conn":"n1.5","user":"u"}"#
        );
        assert_eq!(
            &joined_binary("g", 2, "ep", None)[..],
            b"\x07\0\0\0\x02\x02\0\0\0\0\0\0\0\x02epg"
        );
    }
}
