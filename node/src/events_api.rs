//! `GET /v1/events`: the account's event stream as a WebSocket.
//!
//! The request is authorized like every `/v1` route (bearer token in the
//! `Authorization` header; no query-string token, so it never lands in
//! logs or browser history). Each event is one text frame holding one JSON
//! object with a snake_case `type` (`message`, `member`, `profile`, `sync`,
//! `connection`, `lagged`, `omitted`; see `docs/PROTOCOL.md` §6.1). The
//! server only sends; it answers pings and ends the stream on a close
//! frame, and closes with "going away" when the account stops or the
//! daemon is told to stop (SIGTERM/SIGINT).
//!
//! Bounds: the account's bus holds at most `EVENT_QUEUE_CAPACITY` events for
//! the slowest subscriber and actix-ws queues at most 32 frames per
//! session; a client that reads slower than events arrive loses the
//! oldest ones and receives a `lagged` event with the count.

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use futures::StreamExt;
use serde_json::json;
use starling_actors::account::swarm_ops::SubscribeAccountEvents;

use crate::api::{ApiError, ApiState, Authorized};

async fn events(
    _: Authorized,
    state: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // Refuse a plain GET before subscribing, so it costs no subscriber slot.
    let upgrade = req
        .headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return Err(ApiError::BadRequest(
            "GET /v1/events is a WebSocket: send Upgrade: websocket".into(),
        ));
    }
    let mut subscription = state.ask(SubscribeAccountEvents).await?;
    let (response, mut session, mut incoming) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    actix_web::rt::spawn(async move {
        // The server's graceful stop waits for open connections; a stream
        // never ends by itself, so it ends on the same signals the server
        // stops on, and the daemon stops without waiting out its grace.
        let mut stopping = StopSignals::new();
        let reason = loop {
            tokio::select! {
                () = stopping.recv() => break Some(CloseReason::from(CloseCode::Away)),
                event = subscription.next() => match event {
                    Some(event) => {
                        let text = match serde_json::to_string(&*event) {
                            Ok(text) => text,
                            Err(e) => {
                                tracing::error!(error = %e, "event not serialized");
                                continue;
                            }
                        };
                        if session.text(text).await.is_err() {
                            return;
                        }
                    }
                    None => break Some(CloseReason::from(CloseCode::Away)),
                },
                message = incoming.next() => match message {
                    Some(Ok(Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "event stream client error");
                        break Some(CloseReason::from(CloseCode::Protocol));
                    }
                    Some(Ok(_)) => {}
                },
            }
        };
        let _ = session.close(reason).await;
    });
    Ok(response)
}

/// SIGTERM and SIGINT, as one future per wait; never fires where they
/// cannot be listened to.
struct StopSignals {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            terminate: signal(SignalKind::terminate()).ok(),
            interrupt: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn recv(&mut self) {
        async fn on(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = on(&mut self.terminate) => {}
            () = on(&mut self.interrupt) => {}
        }
    }
}

/// Adds `/events` to the `/v1` scope.
pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/events", web::get().to(events));
}

/// The route's OpenAPI path item.
pub fn openapi_paths() -> Vec<(&'static str, serde_json::Value)> {
    let error = json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    vec![(
        "/v1/events",
        json!({ "get": {
            "summary": "Event stream (WebSocket). Each text frame is one Event.",
            "description": "Upgrade to a WebSocket with the bearer token in the Authorization header. The server sends one JSON Event per text frame; a client that reads too slowly gets a `lagged` event with the number of events it lost.",
            "responses": {
                "101": { "description": "switching to the WebSocket protocol; frames carry Event objects",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Event" } } } },
                "400": error, "401": error,
                "503": { "description": "too many subscribers", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
            } } }),
    )]
}

/// The `Event` schema (and its variants).
pub fn openapi_schemas() -> Vec<(&'static str, serde_json::Value)> {
    let hex40 = json!({ "type": "string", "pattern": "^[0-9a-f]{40}$" });
    let hex64 = json!({ "type": "string", "pattern": "^[0-9a-f]{64}$" });
    let nullable_hex64 = json!({ "type": ["string", "null"], "pattern": "^[0-9a-f]{64}$" });
    let kind = |name: &str| json!({ "type": "string", "const": name });
    vec![(
        "Event",
        json!({ "oneOf": [
            { "type": "object", "title": "message", "required": ["type", "conversation", "id", "author", "timestamp", "kind", "body"], "properties": {
                "type": kind("message"), "conversation": hex40, "id": hex40, "author": nullable_hex64,
                "timestamp": { "type": "integer", "description": "display time (committer time, no earlier than its parents'), seconds since the Unix epoch" },
                "kind": { "type": "string", "enum": ["text", "reply", "edit", "delete", "reaction"] },
                "body": { "type": "string", "description": "text; new text for edit; empty for delete; the reaction for reaction" },
                "reply_to": hex40, "target": hex40 } },
            { "type": "object", "title": "member", "required": ["type", "conversation", "id", "account_id", "action", "by", "timestamp"], "properties": {
                "type": kind("member"), "conversation": hex40, "id": hex40, "account_id": hex64,
                "action": { "type": "string", "enum": ["invite", "join", "leave", "remove", "ban", "unban", "vote_ban", "vote_unban"] },
                "by": nullable_hex64, "timestamp": { "type": "integer" } } },
            { "type": "object", "title": "profile", "required": ["type", "conversation", "id", "by"], "properties": {
                "type": kind("profile"), "conversation": hex40, "id": hex40, "by": nullable_hex64 } },
            { "type": "object", "title": "sync", "required": ["type", "conversation", "tips", "peer", "state", "accepted"], "properties": {
                "type": kind("sync"), "conversation": hex40, "tips": { "type": "array", "items": hex40 }, "peer": hex64,
                "state": { "type": "string", "enum": ["fetched", "failed"] }, "accepted": { "type": "integer" } } },
            { "type": "object", "title": "connection", "required": ["type", "device_id", "account_id", "state"], "properties": {
                "type": kind("connection"), "device_id": hex64, "account_id": hex64,
                "state": { "type": "string", "enum": ["up", "down"] } } },
            { "type": "object", "title": "rejected", "required": ["type", "conversation", "id", "peer", "reason", "detail"], "properties": {
                "type": kind("rejected"), "conversation": hex40, "id": hex40, "peer": hex64,
                "reason": { "type": "string", "description": "a validation reason name (PROTOCOL.md §9.6), or other" },
                "detail": { "type": "string", "description": "the peer's sentence, for display" } } },
            { "type": "object", "title": "clock", "required": ["type", "offset_seconds", "peers", "state"], "properties": {
                "type": kind("clock"),
                "offset_seconds": { "type": "integer", "description": "this device's clock minus its connected peers' (median), seconds" },
                "peers": { "type": "integer" },
                "state": { "type": "string", "enum": ["skewed", "ok"], "description": "past the 2-minute threshold, or back within it" } } },
            { "type": "object", "title": "health", "required": ["type", "conversation", "state", "detail"], "properties": {
                "type": kind("health"), "conversation": hex40,
                "state": { "type": "string", "enum": ["unhealthy", "healthy"], "description": "the conversation's writes fail (it is probed with back-off), or work again" },
                "reason": { "type": "string", "enum": ["locked", "io", "damaged", "format"], "description": "why it cannot write (unhealthy only)" },
                "detail": { "type": "string", "description": "the error, for display" } } },
            { "type": "object", "title": "lagged", "required": ["type", "dropped"], "properties": {
                "type": kind("lagged"), "dropped": { "type": "integer", "description": "events this subscriber lost" } } },
            { "type": "object", "title": "omitted", "required": ["type", "conversation", "omitted"], "properties": {
                "type": kind("omitted"), "conversation": hex40, "omitted": { "type": "integer", "description": "commits of one move of the tips not described" } } }
        ] }),
    )]
}
