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
use starling_actors::account::{Account, AccountStatus, GetStatus};

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
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::PayloadTooLarge => "payload_too_large",
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
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
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
    let account = state
        .account
        .send(GetStatus)
        .await
        .map_err(|e| ApiError::Internal(format!("account actor: {e}")))?;
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
    HttpResponse::Ok().json(openapi_document())
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route {} {}",
        req.method(),
        req.path()
    )))
}

/// The OpenAPI 3.1 description of the routes above.
pub fn openapi_document() -> serde_json::Value {
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
                    "required": ["account_id", "device_id", "display_name", "crl_number", "devices", "api", "pid"],
                    "properties": {
                        "account_id": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
                        "device_id": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
                        "display_name": { "type": "string" },
                        "crl_number": { "type": "integer" },
                        "devices": { "type": "array", "items": { "type": "object", "properties": {
                            "device_id": { "type": "string" }, "revoked": { "type": "boolean" }, "this_device": { "type": "boolean" } } } },
                        "api": { "type": "string", "format": "uri" },
                        "pid": { "type": "integer" }
                    }
                }
            }
        },
        "security": [{ "token": [] }],
        "paths": {
            "/v1/status": { "get": { "summary": "This node's account, device and addresses",
                "responses": { "200": { "description": "status", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } }, "401": error } } },
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
    config
        .app_data(json_errors)
        .route("/metrics", web::get().to(metrics))
        .service(
            web::scope("/v1")
                .route("/status", web::get().to(status))
                .route("/openapi.json", web::get().to(|_: Authorized| openapi())),
        )
        .default_service(web::to(not_found));
}
