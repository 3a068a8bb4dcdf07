//! API routes for the swarm operations beyond sending text: edit, delete,
//! react, ban/unban (admin votes), and the conversation profile. Each is
//! one commit of the swarm format; the swarm's own rules refuse what a
//! member may not do (400 with the rule's reason).

use actix_web::{web, HttpResponse};
use serde_json::json;
use starling_actors::account::swarm_ops::{
    BanVote, DeleteMessage, EditMessage, React, SwarmProfile, UpdateProfile,
};
use starling_protocol::swarm::body::VoteAction;
use starling_protocol::swarm::ids::CommitId;

use crate::api::{account_id, conversation_id, ApiError, ApiState, Authorized};

fn message_id(text: &str) -> Result<CommitId, ApiError> {
    text.parse()
        .map_err(|e| ApiError::BadRequest(format!("message id: {e}")))
}

/// `POST /v1/swarms/{id}/messages/{message}/edit` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EditRequest {
    text: String,
}

async fn edit(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
    body: web::Json<EditRequest>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, target) = (conversation_id(&path.0)?, message_id(&path.1)?);
    let id = state
        .ask(EditMessage {
            conversation,
            target,
            text: body.into_inner().text,
        })
        .await?;
    Ok(HttpResponse::Created().json(json!({ "id": id.to_hex() })))
}

async fn delete(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, target) = (conversation_id(&path.0)?, message_id(&path.1)?);
    let id = state
        .ask(DeleteMessage {
            conversation,
            target,
        })
        .await?;
    Ok(HttpResponse::Created().json(json!({ "id": id.to_hex() })))
}

/// `POST /v1/swarms/{id}/messages/{message}/reactions` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReactRequest {
    reaction: String,
}

async fn react(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
    body: web::Json<ReactRequest>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, target) = (conversation_id(&path.0)?, message_id(&path.1)?);
    let id = state
        .ask(React {
            conversation,
            target,
            reaction: body.into_inner().reaction,
        })
        .await?;
    Ok(HttpResponse::Created().json(json!({ "id": id.to_hex() })))
}

/// `POST /v1/swarms/{id}/ban` and `/unban` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountRequest {
    account_id: String,
}

async fn vote(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Json<AccountRequest>,
    action: VoteAction,
) -> Result<HttpResponse, ApiError> {
    let conversation = conversation_id(&path)?;
    let account = account_id(&body.account_id)?;
    let outcome = state
        .ask(BanVote {
            conversation,
            account,
            action,
        })
        .await?;
    let verb = action.as_str();
    Ok(HttpResponse::Ok().json(json!({
        "account_id": account,
        "action": verb,
        "voted": outcome.voted,
        "done": outcome.done,
    })))
}

async fn ban(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Json<AccountRequest>,
) -> Result<HttpResponse, ApiError> {
    vote(state, path, body, VoteAction::Ban).await
}

async fn unban(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Json<AccountRequest>,
) -> Result<HttpResponse, ApiError> {
    vote(state, path, body, VoteAction::Unban).await
}

/// `POST /v1/swarms/{id}/profile` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileRequest {
    title: Option<String>,
    description: Option<String>,
}

async fn update_profile(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Json<ProfileRequest>,
) -> Result<HttpResponse, ApiError> {
    let conversation = conversation_id(&path)?;
    let body = body.into_inner();
    let id = state
        .ask(UpdateProfile {
            conversation,
            title: body.title,
            description: body.description,
        })
        .await?;
    Ok(HttpResponse::Created().json(json!({ "id": id.to_hex() })))
}

async fn profile(
    _: Authorized,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversation = conversation_id(&path)?;
    let profile = state.ask(SwarmProfile { conversation }).await?;
    Ok(HttpResponse::Ok().json(profile))
}

/// Adds the routes to the `/v1` scope.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/swarms/{id}/messages/{message}/edit", web::post().to(edit))
        .route(
            "/swarms/{id}/messages/{message}/delete",
            web::post().to(delete),
        )
        .route(
            "/swarms/{id}/messages/{message}/reactions",
            web::post().to(react),
        )
        .route("/swarms/{id}/ban", web::post().to(ban))
        .route("/swarms/{id}/unban", web::post().to(unban))
        .route("/swarms/{id}/profile", web::post().to(update_profile))
        .route("/swarms/{id}/profile", web::get().to(profile));
}

/// The routes' OpenAPI path items.
pub fn openapi_paths() -> Vec<(&'static str, serde_json::Value)> {
    let error = json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    let body = |schema: serde_json::Value| json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    let created = json!({ "description": "{id} of the new commit" });
    let account = json!({ "type": "object", "required": ["account_id"], "properties": { "account_id": { "type": "string", "pattern": "^[0-9a-f]{64}$" } } });
    let vote_answer = json!({ "description": "{account_id, action, voted, done}: voted = this admin's vote was recorded now; done = the quorum was there and the ban/unban commit was made" });
    vec![
        (
            "/v1/swarms/{id}/messages/{message}/edit",
            json!({ "post": {
            "summary": "Replace the text of one of this account's messages (an edit of another's message is shown by nobody)",
            "requestBody": body(json!({ "type": "object", "required": ["text"], "properties": { "text": { "type": "string", "minLength": 1, "maxLength": 32768 } } })),
            "responses": { "201": created, "400": error, "401": error, "404": error, "413": error } } }),
        ),
        (
            "/v1/swarms/{id}/messages/{message}/delete",
            json!({ "post": {
            "summary": "Delete one of this account's messages (an edit with empty text)",
            "responses": { "201": created, "400": error, "401": error, "404": error } } }),
        ),
        (
            "/v1/swarms/{id}/messages/{message}/reactions",
            json!({ "post": {
            "summary": "React to a message",
            "requestBody": body(json!({ "type": "object", "required": ["reaction"], "properties": { "reaction": { "type": "string", "minLength": 1, "maxLength": 64 } } })),
            "responses": { "201": created, "400": error, "401": error, "404": error } } }),
        ),
        (
            "/v1/swarms/{id}/ban",
            json!({ "post": {
            "summary": "Admins: vote to ban an account, and ban it once more than half of the other admins voted",
            "requestBody": body(account.clone()),
            "responses": { "200": vote_answer.clone(), "400": error, "401": error, "404": error } } }),
        ),
        (
            "/v1/swarms/{id}/unban",
            json!({ "post": {
            "summary": "Admins: vote to lift a ban, and lift it once more than half of the other admins voted",
            "requestBody": body(account),
            "responses": { "200": vote_answer, "400": error, "401": error, "404": error } } }),
        ),
        (
            "/v1/swarms/{id}/profile",
            json!({
            "post": { "summary": "Change the conversation profile's title and/or description (admins; members in one-to-one)",
                "requestBody": body(json!({ "type": "object", "properties": { "title": { "type": "string" }, "description": { "type": "string" } } })),
                "responses": { "201": created, "400": error, "401": error, "404": error } },
            "get": { "summary": "The conversation profile (profile.json)", "responses": { "200": { "description": "{title?, description?, ...}" }, "401": error, "404": error } } }),
        ),
    ]
}
