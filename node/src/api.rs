//! The local HTTP API (JSON under `/v1`) and `/metrics`.
//!
//! Every `/v1` route requires `Authorization: Bearer <token>`, the token the
//! daemon writes to `DATA_DIR/api.token` (0600) at start-up; `/metrics` is
//! open so Prometheus can scrape it. Errors are JSON `{"code", "message"}`:
//! 400 malformed, 401 bad token, 404 unknown route or id, 413 oversize.

use std::future::{ready, Ready};

use actix::Addr;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
use serde_json::json;
use starling_actors::account::swarm_ops::MessagesPage;
use starling_actors::account::swarms::{
    AddPeer, CreateSwarm, ExportAllowedSigners, Invite, Join, ListInvitations, ListSwarms, Members,
    RemoveMember, SendText,
};
use starling_actors::account::{Account, AccountStatus, GetStatus, SwarmError};
use starling_protocol::swarm::body::Mode;
use starling_protocol::swarm::ids::CommitId;
use starling_protocol::swarm::limits::PAGE_MESSAGES_MAX;
use starling_protocol::AccountId;

use crate::config::PeerAddr;

/// Largest JSON body the API accepts.
pub const REQUEST_BODY_BYTES_MAX: usize = 256 * 1024;

/// What the handlers share.
pub struct ApiState {
    pub account: Addr<Account>,
    pub token: String,
    pub registry: Registry,
    /// Facts about this daemon that are not the account's (addresses).
    pub node: NodeFacts,
}

/// Where this daemon can be reached.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeFacts {
    /// Base URL of this API.
    pub api: String,
    /// QUIC address (host:port).
    pub listen: String,
    /// Process id.
    pub pid: u32,
}

/// An API error, rendered as JSON with a stable `code`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong bearer token; it is in DATA_DIR/api.token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("request body is larger than {REQUEST_BODY_BYTES_MAX} bytes")]
    PayloadTooLarge,
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::PayloadTooLarge | ApiError::TooLarge(_) => "payload_too_large",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge | ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .json(json!({ "code": self.code(), "message": self.to_string() }))
    }
}

/// Proof that a request carried the right bearer token. Handlers that take
/// it cannot run without one.
pub struct Authorized;

impl FromRequest for Authorized {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req
            .app_data::<web::Data<ApiState>>()
            .expect("ApiState is registered on the app");
        let presented = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        ready(
            if constant_time_eq(presented.as_bytes(), state.token.as_bytes()) {
                Ok(Authorized)
            } else {
                Err(ApiError::Unauthorized)
            },
        )
    }
}

impl From<SwarmError> for ApiError {
    fn from(e: SwarmError) -> Self {
        match e {
            SwarmError::NotFound(_) | SwarmError::NotInvited(_) => {
                ApiError::NotFound(e.to_string())
            }
            SwarmError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            SwarmError::Refused(_) | SwarmError::BadRequest(_) => {
                ApiError::BadRequest(e.to_string())
            }
            SwarmError::Busy(_) => ApiError::Unavailable(e.to_string()),
            SwarmError::InviterOffline(_)
            | SwarmError::AlreadyMember(_)
            | SwarmError::AlreadyExists(_)
            | SwarmError::TooManyConversations => ApiError::Conflict(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn actor_gone(e: actix::MailboxError) -> ApiError {
    ApiError::Internal(format!("account actor: {e}"))
}

impl ApiState {
    /// Asks the account actor; a dead mailbox and the handler's own error
    /// both become API errors.
    pub(crate) async fn ask<M, T, E>(&self, message: M) -> Result<T, ApiError>
    where
        M: actix::Message<Result = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
        Account: actix::Handler<M>,
        ApiError: From<E>,
    {
        Ok(self.account.send(message).await.map_err(actor_gone)??)
    }
}

pub(crate) fn account_id(text: &str) -> Result<AccountId, ApiError> {
    text.parse()
        .map_err(|e| ApiError::BadRequest(format!("account id: {e}")))
}

pub(crate) fn conversation_id(text: &str) -> Result<CommitId, ApiError> {
    text.parse()
        .map_err(|e| ApiError::BadRequest(format!("conversation id: {e}")))
}

/// `POST /v1/peers` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerRequest {
    /// `ACCOUNT_ID@HOST:PORT`.
    peer: String,
}

async fn add_peer(
    _: Authorized,
    state: web::Data<ApiState>,
    body: web::Json<PeerRequest>,
) -> Result<HttpResponse, ApiError> {
    let peer: PeerAddr = body
        .peer
        .parse()
        .map_err(|e: anyhow::Error| ApiError::BadRequest(format!("{e:#}")))?;
    state
        .ask(AddPeer {
            addr: peer.addr,
            account: peer.account,
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "peer": peer.to_string() })))
}

/// `POST /v1/swarms` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    title: Option<String>,
    mode: Option<String>,
}

async fn create_swarm(
    _: Authorized,
    state: web::Data<ApiState>,
    body: web::Json<CreateRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let mode = match body.mode.as_deref() {
        None => Mode::InvitesOnly,
        Some(text) => Mode::parse(text).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "mode {text:?} is not one of one-to-one, admin-invites-only, invites-only, public"
            ))
        })?,
    };
    let id = state
        .ask(CreateSwarm {
            mode,
            title: body.title,
        })
        .await?;
    Ok(HttpResponse::Created().json(json!({ "id": id.to_hex() })))
}

async fn list_swarms(_: Authorized, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let list = state.ask(ListSwarms).await?;
    Ok(HttpResponse::Ok().json(list))
}

/// `POST /v1/swarms/{id}/invites` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteRequest {
    account_id: String,
}

async fn invite(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Json<InviteRequest>,
) -> Result<HttpResponse, ApiError> {
    let conversation = conversation_id(&path)?;
    let account = account_id(&body.account_id)?;
    state
        .ask(Invite {
            conversation,
            account,
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "invited": account })))
}

async fn remove(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Json<InviteRequest>,
) -> Result<HttpResponse, ApiError> {
    let conversation = conversation_id(&path)?;
    let account = account_id(&body.account_id)?;
    state
        .ask(RemoveMember {
            conversation,
            account: Some(account),
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "removed": account })))
}

async fn leave(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversation = conversation_id(&path)?;
    state
        .ask(RemoveMember {
            conversation,
            account: None,
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "left": conversation.to_hex() })))
}

async fn invitations(_: Authorized, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let list = state.ask(ListInvitations).await?;
    Ok(HttpResponse::Ok().json(list))
}

async fn join(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversation = conversation_id(&path)?;
    state.ask(Join { conversation }).await?;
    Ok(HttpResponse::Ok().json(json!({ "id": conversation.to_hex() })))
}

/// `POST /v1/swarms/{id}/messages` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    text: String,
    reply_to: Option<String>,
}

async fn send_message(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Json<SendRequest>,
) -> Result<HttpResponse, ApiError> {
    let conversation = conversation_id(&path)?;
    let body = body.into_inner();
    let reply_to = match body.reply_to {
        Some(text) => Some(
            text.parse()
                .map_err(|e| ApiError::BadRequest(format!("reply_to: {e}")))?,
        ),
        None => None,
    };
    let id = state
        .ask(SendText {
            conversation,
            text: body.text,
            reply_to,
        })
        .await?;
    Ok(HttpResponse::Created().json(json!({ "id": id.to_hex() })))
}

/// `GET /v1/swarms/{id}/messages` query.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    limit: Option<usize>,
    /// A message id: only messages older than it (the next page).
    before: Option<String>,
}

/// Messages listed when the request names no limit.
const MESSAGES_DEFAULT_LIMIT: usize = 100;

async fn messages(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: web::Query<MessagesQuery>,
) -> Result<HttpResponse, ApiError> {
    let conversation = conversation_id(&path)?;
    let limit = query.limit.unwrap_or(MESSAGES_DEFAULT_LIMIT);
    if !(1..=PAGE_MESSAGES_MAX).contains(&limit) {
        // Said, not silently clamped: a caller asking for more would
        // otherwise take a short page for the whole history.
        return Err(ApiError::BadRequest(format!(
            "limit: {limit} is not within 1..={PAGE_MESSAGES_MAX}; page with `before`"
        )));
    }
    let before = match &query.before {
        Some(text) => Some(
            text.parse()
                .map_err(|e| ApiError::BadRequest(format!("before: {e}")))?,
        ),
        None => None,
    };
    let list = state
        .ask(MessagesPage {
            conversation,
            limit,
            before,
        })
        .await?;
    Ok(HttpResponse::Ok().json(list))
}

async fn members(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversation = conversation_id(&path)?;
    let list = state.ask(Members { conversation }).await?;
    Ok(HttpResponse::Ok().json(list))
}

async fn allowed_signers(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversation = conversation_id(&path)?;
    let text = state.ask(ExportAllowedSigners { conversation }).await?;
    Ok(HttpResponse::Ok().content_type("text/plain").body(text))
}

/// Compares without an early exit, so timing does not reveal a prefix match.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /v1/status`: who this node is and where it listens.
#[derive(serde::Serialize)]
struct Status {
    #[serde(flatten)]
    account: AccountStatus,
    #[serde(flatten)]
    node: NodeFacts,
}

async fn status(_: Authorized, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let account = state.account.send(GetStatus).await.map_err(actor_gone)?;
    Ok(HttpResponse::Ok().json(Status {
        account,
        node: state.node.clone(),
    }))
}

async fn metrics(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&state.registry.gather(), &mut text)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type(prometheus::TEXT_FORMAT)
        .body(text))
}

async fn openapi() -> HttpResponse {
    let mut document = openapi_document();
    crate::contacts_api::document(&mut document);
    HttpResponse::Ok().json(document)
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route {} {}",
        req.method(),
        req.path()
    )))
}

/// The OpenAPI 3.1 description of every route (this file's and the
/// modules' that add routes).
pub fn openapi_document() -> serde_json::Value {
    let mut document = base_openapi_document();
    for (path, item) in crate::swarm_ops_api::openapi_paths()
        .into_iter()
        .chain(crate::events_api::openapi_paths())
    {
        document["paths"][path] = item;
    }
    for (name, schema) in crate::events_api::openapi_schemas() {
        document["components"]["schemas"][name] = schema;
    }
    document
}

fn base_openapi_document() -> serde_json::Value {
    let body = |schema: serde_json::Value| json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    let ok = |what: &str| json!({ "description": what });
    let error = json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Starling node API", "version": "1" },
        "components": {
            "securitySchemes": { "token": { "type": "http", "scheme": "bearer", "description": "the contents of DATA_DIR/api.token" } },
            "schemas": {
                "Error": { "type": "object", "required": ["code", "message"], "properties": { "code": { "type": "string" }, "message": { "type": "string" } } },
                "Status": {
                    "type": "object",
                    "required": ["account_id", "device_id", "display_name", "crl_number", "devices", "api", "listen", "pid"],
                    "properties": {
                        "account_id": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
                        "device_id": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
                        "display_name": { "type": "string" },
                        "crl_number": { "type": "integer" },
                        "devices": { "type": "array", "items": { "type": "object", "properties": {
                            "device_id": { "type": "string" }, "revoked": { "type": "boolean" }, "this_device": { "type": "boolean" } } } },
                        "api": { "type": "string", "format": "uri" },
                        "listen": { "type": "string", "description": "QUIC address, host:port" },
                        "pid": { "type": "integer" },
                        "clock": { "type": ["object", "null"], "description": "this device's clock against its connected peers'", "properties": {
                            "offset_seconds": { "type": ["integer", "null"], "description": "this clock minus the peers' median, seconds; null before any peer sent a reading" },
                            "peers": { "type": "integer" },
                            "warning": { "type": ["string", "null"], "description": "set when the offset is past 2 minutes" } } },
                        "conversations_unhealthy": { "type": "array", "description": "conversations whose writes (or opening) fail; each is probed with back-off until it writes again", "items": { "type": "object",
                            "required": ["conversation", "reason", "detail", "since", "loaded"], "properties": {
                            "conversation": { "type": ["string", "null"], "pattern": "^[0-9a-f]{40}$" },
                            "reason": { "type": "string", "enum": ["locked", "io", "damaged", "format"] },
                            "detail": { "type": "string" },
                            "since": { "type": "integer", "description": "seconds since the Unix epoch" },
                            "loaded": { "type": "boolean", "description": "false while it could not be loaded at all (not listed in /v1/swarms)" } } } }
                    }
                },
                "Message": {
                    "type": "object",
                    "required": ["id", "author", "body", "timestamp"],
                    "properties": {
                        "id": { "type": "string", "pattern": "^[0-9a-f]{40}$" },
                        "author": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
                        "body": { "type": "string" },
                        "timestamp": { "type": "integer", "description": "seconds since the Unix epoch" },
                        "reply_to": { "type": "string", "pattern": "^[0-9a-f]{40}$" },
                        "edited": { "type": "boolean", "description": "its author replaced the text (body is the newest edit)" },
                        "deleted": { "type": "boolean", "description": "its author deleted it (body is empty)" },
                        "reactions": { "type": "array", "items": { "type": "object", "required": ["reaction", "count", "accounts"], "properties": {
                            "reaction": { "type": "string" }, "count": { "type": "integer" }, "accounts": { "type": "array", "items": { "type": "string" } } } } }
                    }
                },
                "Member": {
                    "type": "object",
                    "required": ["account_id", "role"],
                    "properties": {
                        "account_id": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
                        "role": { "type": "string", "enum": ["admin", "member", "invited"] }
                    }
                }
            }
        },
        "security": [{ "token": [] }],
        "paths": {
            "/v1/status": { "get": { "summary": "This node's account, device and addresses",
                "responses": { "200": { "description": "status", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } }, "401": error } } },
            "/v1/peers": { "post": { "summary": "Keep a connection to a device",
                "requestBody": body(json!({ "type": "object", "required": ["peer"], "properties": { "peer": { "type": "string", "description": "ACCOUNT_ID@HOST:PORT" } } })),
                "responses": { "200": ok("the peer"), "400": error, "401": error } } },
            "/v1/swarms": {
                "post": { "summary": "Create a conversation",
                    "requestBody": body(json!({ "type": "object", "properties": { "title": { "type": "string" }, "mode": { "type": "string", "enum": ["one-to-one", "admin-invites-only", "invites-only", "public"] } } })),
                    "responses": { "201": ok("{id}"), "400": error, "401": error } },
                "get": { "summary": "List conversations", "responses": { "200": ok("[{id, tips, members, title}]"), "401": error } } },
            "/v1/invites": { "get": { "summary": "Invitations received and not yet accepted",
                "responses": { "200": ok("[{conversation, title, from}]"), "401": error } } },
            "/v1/swarms/{id}/invites": { "post": { "summary": "Invite an account",
                "requestBody": body(json!({ "type": "object", "required": ["account_id"], "properties": { "account_id": { "type": "string" } } })),
                "responses": { "200": ok("{invited}"), "400": error, "401": error, "404": error } } },
            "/v1/swarms/{id}/join": { "post": { "summary": "Accept an invitation: clone from an inviting device, validate, join",
                "responses": { "200": ok("{id}"), "401": error, "404": error, "409": error } } },
            "/v1/swarms/{id}/remove": { "post": { "summary": "Remove a member or withdraw an invitation (admins)",
                "requestBody": body(json!({ "type": "object", "required": ["account_id"], "properties": { "account_id": { "type": "string" } } })),
                "responses": { "200": ok("{removed}"), "400": error, "401": error, "404": error } } },
            "/v1/swarms/{id}/leave": { "post": { "summary": "Leave the conversation",
                "responses": { "200": ok("{left}"), "400": error, "401": error, "404": error } } },
            "/v1/swarms/{id}/messages": {
                "post": { "summary": "Send a text message (durable when answered)",
                    "requestBody": body(json!({ "type": "object", "required": ["text"], "properties": { "text": { "type": "string", "maxLength": 32768 }, "reply_to": { "type": "string" } } })),
                    "responses": { "201": ok("{id}"), "400": error, "401": error, "404": error, "413": error } },
                "get": { "summary": "Newest text messages first, with edits, deletions and reactions applied",
                    "parameters": [{ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } },
                        { "name": "before", "in": "query", "description": "a message id: the page of messages older than it", "schema": { "type": "string", "pattern": "^[0-9a-f]{40}$" } }],
                    "responses": { "200": { "description": "messages", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Message" } } } } }, "401": error, "404": error } } },
            "/v1/swarms/{id}/members": { "get": { "summary": "Members, admins and invitees",
                "responses": { "200": { "description": "members", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Member" } } } } }, "401": error, "404": error } } },
            "/v1/swarms/{id}/allowed-signers": { "get": { "summary": "allowed-signers file for git verify-commit",
                "responses": { "200": { "description": "text", "content": { "text/plain": {} } }, "401": error, "404": error } } },
            "/v1/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI document" }, "401": error } } },
            "/metrics": { "get": { "summary": "Prometheus metrics (no token needed)", "security": [],
                "responses": { "200": { "description": "Prometheus text format", "content": { "text/plain": {} } } } } }
        }
    })
}

/// Counts API requests by route and status.
#[derive(Clone)]
pub struct ApiMetrics {
    requests: IntCounterVec,
}

impl ApiMetrics {
    /// Registers the API's metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "starling_api_requests_total",
                "Local API requests handled, by route pattern and HTTP status.",
            ),
            &["route", "status"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        Ok(Self { requests })
    }

    /// Counts one response.
    pub fn count(&self, route: &str, status: StatusCode) {
        self.requests
            .with_label_values(&[route, status.as_str()])
            .inc();
    }
}

/// Adds the routes to an app.
pub fn configure(config: &mut web::ServiceConfig) {
    let json_errors = web::JsonConfig::default()
        .limit(REQUEST_BODY_BYTES_MAX)
        .error_handler(|error, _| {
            use actix_web::error::JsonPayloadError;
            match error {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => ApiError::PayloadTooLarge.into(),
                other => ApiError::BadRequest(other.to_string()).into(),
            }
        });
    let query_errors = web::QueryConfig::default()
        .error_handler(|error, _| ApiError::BadRequest(error.to_string()).into());
    config
        .app_data(json_errors)
        .app_data(query_errors)
        .route("/metrics", web::get().to(metrics))
        .service(
            web::scope("/v1")
                .route("/status", web::get().to(status))
                .route("/peers", web::post().to(add_peer))
                .route("/swarms", web::post().to(create_swarm))
                .route("/swarms", web::get().to(list_swarms))
                .route("/invites", web::get().to(invitations))
                .route("/swarms/{id}/invites", web::post().to(invite))
                .route("/swarms/{id}/join", web::post().to(join))
                .route("/swarms/{id}/remove", web::post().to(remove))
                .route("/swarms/{id}/leave", web::post().to(leave))
                .route("/swarms/{id}/messages", web::post().to(send_message))
                .route("/swarms/{id}/messages", web::get().to(messages))
                .route("/swarms/{id}/members", web::get().to(members))
                .route(
                    "/swarms/{id}/allowed-signers",
                    web::get().to(allowed_signers),
                )
                .route("/openapi.json", web::get().to(|_: Authorized| openapi()))
                .configure(crate::contacts_api::routes)
                .configure(crate::swarm_ops_api::routes)
                .configure(crate::events_api::routes),
        )
        .default_service(web::to(not_found));
}
