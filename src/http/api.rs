//! The HTTP server API under `/api`, for application backends: publish to a
//! group, broadcast, send to one connection, disconnect a connection, list
//! groups. Documented in `docs/http-api.md` and `docs/openapi.yaml`.
//!
//! Publications go through the node's broker exactly like a WebSocket
//! publish, so members receive the same frames. Bodies are read with a size
//! limit and parsed borrowing from the body: `data` is forwarded as the raw
//! JSON text the caller sent, never re-serialized.
//!
//! Access: with an API key configured, every request needs
//! `Authorization: Bearer KEY`. Without one, only loopback clients are
//! served, so a default install is never an open relay; the client's
//! address is the one the per-IP limits use (behind a trusted proxy, the
//! one `X-Forwarded-For` names), and [`proxy_without_key_warning`] is
//! logged at startup when proxies are trusted without a key.
//!
//! Bodies are bounded in size and in time: a declared `Content-Length`
//! over the limit is refused before the body is read, and a body that
//! stops arriving for `--body-timeout` gets 408 (see `read_body`).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::HttpBody as _;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::broker::{BrokerError, Payload, Publication, Target};
use crate::disconnect::{API_DISCONNECT, ApiClose, Disconnect};
use crate::id::ClientId;
use crate::node::Node;
use crate::protocol::validate_group;

/// An API error: status, machine code, human message; rendered as
/// `{"error":{"code":..,"message":..}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    /// Answer with `Connection: close` (the request was not read to its
    /// end, so the connection cannot carry another one).
    close: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            close: false,
        }
    }

    fn closing(self) -> Self {
        Self { close: true, ..self }
    }

    fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = super::error(self.status, self.code, &self.message);
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.close {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

type ApiResult = Result<Response, ApiError>;

/// The `/api` routes, with access control.
pub fn router(node: Arc<Node>) -> Router<Arc<Node>> {
    Router::new()
        .route("/publish", post(publish))
        .route("/broadcast", post(broadcast))
        .route("/send", post(send))
        .route("/disconnect", post(disconnect))
        .route("/groups", get(list_groups))
        .route("/groups/{group}", get(group_info))
        .route("/groups/{group}/history", get(group_history))
        .route("/groups/{group}/presence", get(group_presence))
        .route("/groups/{group}/presence_stats", get(group_presence_stats))
        .route_layer(middleware::from_fn_with_state(node, authorize))
}

/// Bearer key when configured; otherwise loopback callers only.
async fn authorize(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    match &node.config.api_key {
        Some(key) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes())
                .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
                .map(|v| &v[7..]);
            match given {
                None => {
                    return ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "missing 'Authorization: Bearer <api key>' header",
                    )
                    .into_response();
                }
                Some(given) if !constant_time_eq(given, key.as_bytes()) => {
                    return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid API key")
                        .into_response();
                }
                Some(_) => {}
            }
        }
        None => {
            // The client is judged by the address the per-IP limits use:
            // behind a trusted proxy, the one `X-Forwarded-For` names, not
            // the proxy's own (often loopback) address.
            let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
            let loopback = peer.is_some_and(|p| match node.limits.client_ip(p, req.headers()) {
                std::net::IpAddr::V4(ip) => ip.is_loopback(),
                std::net::IpAddr::V6(ip) => {
                    ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
                }
            });
            if !loopback {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "no API key is configured, so the API answers only loopback clients; \
                     start the server with --api-key to allow remote callers",
                )
                .into_response();
            }
        }
    }
    next.run(req).await
}

/// The warning to log at startup when `config` trusts proxies but has no
/// API key (`None` otherwise): the API then serves requests whose
/// forwarded client address is loopback, so a proxy that does not set
/// `X-Forwarded-For` makes every request it forwards look local.
pub fn proxy_without_key_warning(config: &crate::config::Config) -> Option<String> {
    (config.api_key.is_none() && !config.trusted_proxy.is_empty()).then(|| {
        format!(
            "--trusted-proxy is set ({}) but no --api-key: /api serves only requests whose \
             client address is loopback, and behind a trusted proxy that is the address \
             X-Forwarded-For names; a proxy that does not set X-Forwarded-For (or passes on \
             the client's own without appending the address it saw) makes every proxied \
             request look local and opens /api to anyone who can reach the proxy: set --api-key",
            config.trusted_proxy.join(", ")
        )
    })
}

/// Compare without an early exit, so timing does not reveal the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Largest body of `/api/disconnect`: a connection id, a code and a
/// reason of at most 123 bytes fit many times over.
const DISCONNECT_BODY_LIMIT: usize = 4096;

/// Which limit a body is held to, for the 413 message.
#[derive(Clone, Copy)]
enum BodyLimit {
    /// `--max-message-size`: bodies that carry a message.
    MessageSize(usize),
    /// An endpoint's own limit.
    Endpoint(usize),
}

impl BodyLimit {
    fn max(self) -> usize {
        let (Self::MessageSize(max) | Self::Endpoint(max)) = self;
        max
    }

    /// The 413 for a body over this limit. The rest of the body is not
    /// read, so the connection is closed after the answer.
    fn exceeded(self) -> ApiError {
        let max = self.max();
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            match self {
                Self::MessageSize(_) => {
                    format!("request body exceeds the maximum message size of {max} bytes")
                }
                Self::Endpoint(_) => {
                    format!("request body exceeds this endpoint's limit of {max} bytes")
                }
            },
        )
        .closing()
    }
}

/// Read the body of a publish-like request: held to the message size.
async fn read_message_body(node: &Node, req: Request) -> Result<Bytes, ApiError> {
    let limit = BodyLimit::MessageSize(node.config.max_message_size);
    read_body(req, limit, node.config.body_timeout).await
}

/// Read a body within `limit`, waiting at most `stall` for each next piece
/// of it (`--body-timeout`: a pause limit, reset whenever bytes arrive,
/// not a deadline for the whole body).
///
/// A declared `Content-Length` above the limit is refused before any of
/// the body is read. A body that pauses too long gets 408. Both answers
/// leave the rest of the body unread, so they close the connection
/// (`Connection: close`; hyper also stops reading a request whose body
/// was dropped unfinished, and then does not keep the connection alive).
async fn read_body(req: Request, limit: BodyLimit, stall: Duration) -> Result<Bytes, ApiError> {
    let max = limit.max();
    let mut body = req.into_body();
    // For a `Content-Length` body, hyper's size hint is exactly that
    // length; for a chunked one it is 0 and the limit is checked as the
    // chunks arrive.
    if body.size_hint().lower() > max as u64 {
        return Err(limit.exceeded());
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    loop {
        let frame = match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "no byte of the request body arrived for {}; the connection is closed",
                        humantime::format_duration(stall)
                    ),
                )
                .closing());
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ApiError::bad_request(format!("cannot read request body: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers (of a chunked body) carry nothing the API reads.
        let Ok(data) = frame.into_data() else { continue };
        len += data.len();
        if len > max {
            return Err(limit.exceeded());
        }
        if !data.is_empty() {
            chunks.push(data);
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        // The usual case: no copy.
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = bytes::BytesMut::with_capacity(len);
            for c in &chunks {
                all.extend_from_slice(c);
            }
            all.freeze()
        }
    })
}

/// What the body of a publish-like request is.
enum BodyKind {
    Json,
    Binary,
}

fn body_kind(req: &Request) -> Result<BodyKind, ApiError> {
    let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(BodyKind::Json);
    };
    let ct = ct.to_str().unwrap_or("").split(';').next().unwrap_or("").trim();
    if ct.eq_ignore_ascii_case("application/json") {
        Ok(BodyKind::Json)
    } else if ct.eq_ignore_ascii_case("application/octet-stream") {
        Ok(BodyKind::Binary)
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json or application/octet-stream",
        ))
    }
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    // Serde would also take an array as a struct; bodies are objects.
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

fn check_group(group: &str) -> Result<(), ApiError> {
    validate_group(group).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_group", m))
}

/// The raw JSON of `data`, shared with the body (no copy).
fn data_bytes(body: &Bytes, data: &RawValue) -> Payload {
    Payload::Json(body.slice_ref(data.get().as_bytes()))
}

/// Count and deliver a publication that came through the API (it has no
/// publishing connection and no user).
async fn publish_from_api(node: &Node, target: Target, payload: Payload, body_len: usize) -> ApiResult {
    node.metrics
        .api_publishes(matches!(payload, Payload::Binary(_)), body_len);
    let publication = Publication {
        target,
        from: None,
        user: None,
        payload,
    };
    match node.broker.publish(publication).wait().await {
        Ok(()) => Ok(axum::Json(json!({ "published": true })).into_response()),
        Err(e) => Err(broker_error(e)),
    }
}

fn broker_error(e: BrokerError) -> ApiError {
    match e {
        BrokerError::UnknownConnection(id) => unknown_connection(&id.to_string()),
        BrokerError::Unavailable(m) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable", m)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    #[serde(borrow)]
    group: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct GroupQuery {
    group: Option<String>,
}

/// Whether every `%XX` escape of `query` decodes, value by value, to UTF-8.
fn query_is_utf8(query: &str) -> bool {
    query.split('&').all(|pair| {
        let b = pair.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b[i],
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (b'%', Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                (c, _, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        std::str::from_utf8(&out).is_ok()
    })
}

/// `POST /api/publish`: JSON `{"group","data"}`, or raw bytes with
/// `Content-Type: application/octet-stream` and `?group=G`.
async fn publish(
    State(node): State<Arc<Node>>,
    q: Result<Query<GroupQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> ApiResult {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    // The query extractor decodes invalid UTF-8 lossily (into U+FFFD), which
    // would publish to another group than the one named: refuse it.
    if q.group.is_some() && !query_is_utf8(req.uri().query().unwrap_or("")) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_group",
            "group name is not valid UTF-8",
        ));
    }
    let kind = body_kind(&req)?;
    let body = read_message_body(&node, req).await?;
    let (group, payload) = match kind {
        BodyKind::Json => {
            let b: PublishBody<'_> = parse_json(&body)?;
            (Arc::<str>::from(&*b.group), data_bytes(&body, b.data))
        }
        BodyKind::Binary => {
            let group = q
                .group
                .ok_or_else(|| ApiError::bad_request("binary publish needs the group in '?group='"))?;
            (Arc::<str>::from(group), Payload::Binary(body.clone()))
        }
    };
    check_group(&group)?;
    publish_from_api(&node, Target::Group(group), payload, body.len()).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

/// `POST /api/broadcast`: `{"data"}` to every connection.
async fn broadcast(State(node): State<Arc<Node>>, req: Request) -> ApiResult {
    json_only(&req)?;
    let body = read_message_body(&node, req).await?;
    let b: BroadcastBody<'_> = parse_json(&body)?;
    publish_from_api(&node, Target::All, data_bytes(&body, b.data), body.len()).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody<'a> {
    #[serde(borrow)]
    to: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn unknown_connection(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_connection",
        format!("no connection with id '{id}'"),
    )
}

/// `POST /api/send`: `{"to","data"}` to one connection; 404 if unknown.
async fn send(State(node): State<Arc<Node>>, req: Request) -> ApiResult {
    json_only(&req)?;
    let body = read_message_body(&node, req).await?;
    let b: SendBody<'_> = parse_json(&body)?;
    let id = ClientId::parse(&b.to).ok_or_else(|| unknown_connection(&b.to))?;
    publish_from_api(&node, Target::Conn(id), data_bytes(&body, b.data), body.len())
        .await
        .map_err(|e| match e.code {
            // Name the id as the caller wrote it.
            "unknown_connection" => unknown_connection(&b.to),
            _ => e,
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    conn: String,
    #[serde(default = "default_disconnect_code")]
    code: u16,
    #[serde(default)]
    reason: String,
}

fn default_disconnect_code() -> u16 {
    API_DISCONNECT
}

/// `POST /api/disconnect`: close a connection with a code and reason,
/// after what is already queued for it.
async fn disconnect(State(node): State<Arc<Node>>, req: Request) -> ApiResult {
    json_only(&req)?;
    let body = read_body(
        req,
        BodyLimit::Endpoint(DISCONNECT_BODY_LIMIT),
        node.config.body_timeout,
    )
    .await?;
    let b: DisconnectBody = parse_json(&body)?;
    if !(b.code == 1000 || (3000..=4999).contains(&b.code)) {
        return Err(ApiError::bad_request(
            "'code' must be 1000 or between 3000 and 4999",
        ));
    }
    if b.reason.len() > 123 {
        return Err(ApiError::bad_request("'reason' must be at most 123 bytes"));
    }
    let id = ClientId::parse(&b.conn).ok_or_else(|| unknown_connection(&b.conn))?;
    let close = ApiClose {
        code: b.code,
        reason: b.reason.into(),
    };
    if !node.is_local(&id) {
        // Another node's connection: the broker carries the request there.
        return match node.broker.disconnect(id, close).wait().await {
            Ok(()) => Ok((
                StatusCode::ACCEPTED,
                axum::Json(json!({ "conn": b.conn, "code": b.code, "forwarded": true })),
            )
                .into_response()),
            Err(BrokerError::UnknownConnection(_)) => Err(unknown_connection(&b.conn)),
            Err(e) => Err(broker_error(e)),
        };
    }
    let outbox = node
        .hub
        .connection(id.conn)
        .ok_or_else(|| unknown_connection(&b.conn))?;
    let accepted = outbox.request_close(Disconnect::Api(Box::new(close)));
    Ok(axum::Json(json!({
        "conn": b.conn,
        "code": b.code,
        "already_closing": !accepted,
    }))
    .into_response())
}

fn json_only(req: &Request) -> Result<(), ApiError> {
    match body_kind(req)? {
        BodyKind::Json => Ok(()),
        BodyKind::Binary => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "this endpoint takes application/json",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// Largest page of `/api/groups`.
const MAX_PAGE: usize = 1000;

/// `GET /api/groups?limit=N&after=NAME`: groups by name with member counts.
async fn list_groups(
    State(node): State<Arc<Node>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "'limit' must be between 1 and {MAX_PAGE}"
        )));
    }
    let (groups, more) = node.hub.list_groups(q.after.as_deref(), limit);
    let next = if more {
        groups.last().map(|g| g.0.to_string())
    } else {
        None
    };
    let mut listed = Vec::with_capacity(groups.len());
    for (name, members) in &groups {
        // Across the cluster where presence counts the group; this node's
        // members otherwise.
        let members = crate::roster::count(&node, name).await.unwrap_or(*members as u64);
        listed.push(json!({ "name": &**name, "members": members }));
    }
    let groups = listed;
    Ok(axum::Json(json!({ "groups": groups, "next": next })).into_response())
}

/// `GET /api/groups/{group}`: member count and connection ids.
async fn group_info(
    State(node): State<Arc<Node>>,
    group: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult {
    let Path(group) =
        group.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_group", e.body_text()))?;
    check_group(&group)?;
    if let Some(r) = crate::roster::connections(&node, &group).await {
        // The group has presence: its members on every node.
        let (conns, members, truncated) = r.map_err(presence_unavailable)?;
        if members == 0 {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_group",
                "no group with that name has members",
            ));
        }
        return Ok(axum::Json(json!({
            "name": group,
            "members": members,
            "connections": conns,
            "truncated": truncated,
        }))
        .into_response());
    }
    let ids = node.hub.group_members(&group).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_group",
            "no group with that name has members",
        )
    })?;
    let conns: Vec<String> = ids.iter().map(|&id| node.client_id(id).to_string()).collect();
    Ok(axum::Json(json!({ "name": group, "members": conns.len(), "connections": conns })).into_response())
}

fn presence_unavailable(e: crate::presence::PresenceError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "broker_unavailable",
        e.to_string(),
    )
}

/// `GET /api/groups/{group}/presence`: the group's members across the
/// cluster (at most `max_presence_members`), with its counts.
async fn group_presence(
    State(node): State<Arc<Node>>,
    group: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult {
    presence_answer(&node, group, false).await
}

/// `GET /api/groups/{group}/presence_stats`: the group's counts.
async fn group_presence_stats(
    State(node): State<Arc<Node>>,
    group: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult {
    presence_answer(&node, group, true).await
}

async fn presence_answer(
    node: &Node,
    group: Result<Path<String>, axum::extract::rejection::PathRejection>,
    stats: bool,
) -> ApiResult {
    let Path(group) =
        group.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_group", e.body_text()))?;
    check_group(&group)?;
    let body =
        crate::roster::read(node, &group, stats, None)
            .await
            .map_err(|(code, message)| match code {
                crate::protocol::ErrorCode::NoPresence => {
                    ApiError::new(StatusCode::NOT_FOUND, "no_presence", message)
                }
                _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable", message),
            })?;
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.to_vec(),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/groups/{group}/history?since=N&limit=L`: the group's kept
/// publications after offset `since` (or the latest), at most `limit`
/// (1 to 1000, default 100), with its offset and epoch.
async fn group_history(
    State(node): State<Arc<Node>>,
    group: Result<Path<String>, axum::extract::rejection::PathRejection>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Path(group) =
        group.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_group", e.body_text()))?;
    check_group(&group)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > crate::protocol::MAX_HISTORY_LIMIT {
        return Err(ApiError::bad_request(format!(
            "'limit' must be between 1 and {}",
            crate::protocol::MAX_HISTORY_LIMIT
        )));
    }
    let features = node.rules.features(&group);
    let Some(history) = node.history.clone().filter(|_| features.history()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_history",
            format!("group '{group}' keeps no history"),
        ));
    };
    let name: Arc<str> = group.into();
    let page = history
        .read(&name, q.since, limit.min(features.history_size))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                e.to_string(),
            )
        })?;
    let body = crate::history::answer(&name, &page, false, None);
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.to_vec(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tower::ServiceExt as _;

    /// Tests bind only to loopback, so a remote caller cannot come through a
    /// real socket here; the rule is checked on the router with the peer
    /// address the accept loop would have attached.
    async fn status_from(peer: &str, api_key: Option<&str>, auth: Option<&str>) -> StatusCode {
        let node = Node::new(Config {
            api_key: api_key.map(Into::into),
            ..Config::default()
        });
        let mut req = axum::http::Request::get("/api/groups").header(header::HOST, "roomcast.test");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let mut req = req.body(axum::body::Body::empty()).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        crate::http::router(node).oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn without_a_key_only_loopback_is_served() {
        assert_eq!(status_from("127.0.0.1:5000", None, None).await, StatusCode::OK);
        assert_eq!(status_from("127.9.9.9:5000", None, None).await, StatusCode::OK);
        assert_eq!(status_from("[::1]:5000", None, None).await, StatusCode::OK);
        assert_eq!(
            status_from("[::ffff:127.0.0.1]:5000", None, None).await,
            StatusCode::OK
        );
        assert_eq!(
            status_from("10.1.2.3:5000", None, None).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status_from("[2001:db8::1]:5000", None, None).await,
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn with_a_key_any_address_with_the_key_is_served() {
        let key = Some("0123456789abcdef");
        assert_eq!(
            status_from("10.1.2.3:5000", key, Some("Bearer 0123456789abcdef")).await,
            StatusCode::OK
        );
        assert_eq!(
            status_from("10.1.2.3:5000", key, None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status_from("127.0.0.1:5000", key, Some("Bearer nope")).await,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
