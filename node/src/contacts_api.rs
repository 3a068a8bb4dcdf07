//! The contact routes of the local API (under `/v1`, bearer token), and
//! their part of the OpenAPI document.
//!
//! | route | answer |
//! |---|---|
//! | `POST /contacts` `{"account_id"}` | 201 the entry (`state` `requested`, or `contact` if they had asked us) |
//! | `GET /contacts` | `[{"account_id","state","conversation","display_name"}]` |
//! | `GET /contacts/requests` | `[{"account_id","conversation","display_name","received"}]` |
//! | `POST /contacts/{account}/accept` | the entry, `state` `contact` |
//! | `POST /contacts/{account}/decline` | the entry, `state` `declined` |
//! | `POST /contacts/{account}/block` | the entry, `state` `blocked` |
//! | `POST /contacts/{account}/unblock` | `{"account_id","unblocked":true}` |

use actix_web::{web, HttpResponse};
use serde_json::json;
use starling_actors::account::contacts::{
    AcceptContact, AddContact, BlockContact, ContactError, DeclineContact, ListContactRequests,
    ListContacts, UnblockContact,
};
use starling_protocol::contact::ContactBookError;
use starling_protocol::AccountId;

use crate::api::{ApiError, ApiState, Authorized};

impl From<ContactError> for ApiError {
    fn from(e: ContactError) -> Self {
        match e {
            ContactError::Book(ContactBookError::NoRequest(_)) => ApiError::NotFound(e.to_string()),
            ContactError::Book(ContactBookError::SelfContact) => {
                ApiError::BadRequest(e.to_string())
            }
            ContactError::Book(_) => ApiError::Conflict(e.to_string()),
            ContactError::NotOneToOne { .. } => ApiError::Conflict(e.to_string()),
            ContactError::Swarm(swarm) => ApiError::from(swarm),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn account_id(text: &str) -> Result<AccountId, ApiError> {
    text.parse()
        .map_err(|e| ApiError::BadRequest(format!("account id: {e}")))
}

/// `POST /v1/contacts` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    account_id: String,
}

async fn add(
    _: Authorized,
    state: web::Data<ApiState>,
    body: web::Json<AddRequest>,
) -> Result<HttpResponse, ApiError> {
    let account = account_id(&body.account_id)?;
    let entry = state.ask(AddContact { account }).await?;
    Ok(HttpResponse::Created().json(entry))
}

async fn list(_: Authorized, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let entries = state
        .account
        .send(ListContacts)
        .await
        .map_err(|e| ApiError::Internal(format!("account actor: {e}")))?;
    Ok(HttpResponse::Ok().json(entries))
}

async fn requests(_: Authorized, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let requests = state
        .account
        .send(ListContactRequests)
        .await
        .map_err(|e| ApiError::Internal(format!("account actor: {e}")))?;
    Ok(HttpResponse::Ok().json(requests))
}

async fn accept(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account = account_id(&path)?;
    Ok(HttpResponse::Ok().json(state.ask(AcceptContact { account }).await?))
}

async fn decline(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account = account_id(&path)?;
    Ok(HttpResponse::Ok().json(state.ask(DeclineContact { account }).await?))
}

async fn block(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account = account_id(&path)?;
    Ok(HttpResponse::Ok().json(state.ask(BlockContact { account }).await?))
}

async fn unblock(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account = account_id(&path)?;
    state.ask(UnblockContact { account }).await?;
    Ok(HttpResponse::Ok().json(json!({ "account_id": account, "unblocked": true })))
}

/// Adds the contact routes to the `/v1` scope.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/contacts", web::post().to(add))
        .route("/contacts", web::get().to(list))
        .route("/contacts/requests", web::get().to(requests))
        .route("/contacts/{account}/accept", web::post().to(accept))
        .route("/contacts/{account}/decline", web::post().to(decline))
        .route("/contacts/{account}/block", web::post().to(block))
        .route("/contacts/{account}/unblock", web::post().to(unblock));
}

/// Adds the contact schemas and paths to the OpenAPI document.
pub fn document(doc: &mut serde_json::Value) {
    let error = json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    let entry = json!({ "description": "the contact", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Contact" } } } });
    let account_param = json!([{ "name": "account", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[0-9a-f]{64}$" } }]);
    doc["components"]["schemas"]["Contact"] = json!({
        "type": "object",
        "required": ["account_id", "state"],
        "properties": {
            "account_id": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
            "state": { "type": "string", "enum": ["contact", "requested", "declined", "blocked"] },
            "conversation": { "type": ["string", "null"], "pattern": "^[0-9a-f]{40}$", "description": "the one-to-one conversation" },
            "display_name": { "type": ["string", "null"] }
        }
    });
    doc["components"]["schemas"]["ContactRequest"] = json!({
        "type": "object",
        "required": ["account_id", "conversation", "display_name", "received"],
        "properties": {
            "account_id": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
            "conversation": { "type": "string", "pattern": "^[0-9a-f]{40}$" },
            "display_name": { "type": "string", "description": "as the requester claims it" },
            "received": { "type": "integer", "description": "seconds since the Unix epoch" }
        }
    });
    let paths = &mut doc["paths"];
    paths["/v1/contacts"] = json!({
        "post": { "summary": "Ask an account to be a contact: a one-to-one swarm inviting it, and a contact request",
            "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["account_id"], "properties": { "account_id": { "type": "string" } } } } } },
            "responses": { "201": entry, "400": error, "401": error, "409": error } },
        "get": { "summary": "Contacts, requests sent and blocked accounts",
            "responses": { "200": { "description": "contacts", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Contact" } } } } }, "401": error } }
    });
    paths["/v1/contacts/requests"] = json!({
        "get": { "summary": "Contact requests received and not answered",
            "responses": { "200": { "description": "requests", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/ContactRequest" } } } } }, "401": error } }
    });
    let action = |summary: &str| {
        json!({ "post": { "summary": summary, "parameters": account_param,
            "responses": { "200": entry, "400": error, "401": error, "404": error, "409": error } } })
    };
    paths["/v1/contacts/{account}/accept"] =
        action("Accept a request: join its one-to-one swarm, record the contact");
    paths["/v1/contacts/{account}/decline"] =
        action("Decline a request; the requester is told and stops asking");
    paths["/v1/contacts/{account}/block"] =
        action("Block an account: its requests are dropped, its connections and channels refused");
    paths["/v1/contacts/{account}/unblock"] = action("Unblock an account");
}
