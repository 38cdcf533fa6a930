//! The OpenAPI 3.1 document, generated from the handlers' annotations, served at
//! `/api/v1/openapi.json` (open: it describes the contract and holds no data).
//!
//! Error codes (the `code` of every error body; stable):
//! - 400 `bad_request` (unreadable body, query or path), `invalid_value` (with `field`),
//!   `unknown_appliance`, `same_appliance`, `same_region`, `ambiguous_id`;
//! - 401 `missing_token`, `invalid_token`; 403 `insufficient_scope`;
//! - 404 `not_found`, `no_model`; 409 `duplicate`, `in_use`, `peer_index_exhausted`;
//! - 413 `body_too_large`; 422 `invalid_model` (a model reload refused: the file is not a valid
//!   model, the old one stays); 503 `auth_unavailable`, `database_unavailable`, `overloaded`
//!   (with `Retry-After`); 500 `internal` is a bug, never the answer to bad input.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Doc, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{OpenApi, PartialSchema, ToSchema};

use super::super::AppState;
use super::super::error::ErrorBody;

/// The document's fixed parts; paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "shadowsteer admin API",
        version = "1",
        description = "Inventory, sessions, risk, steering decisions and tokens of a shadowsteer steering server. Every route needs `Authorization: Bearer sst_...`: GET needs a token with the read scope, every other method (and every /tokens route) the admin scope."
    ),
    tags(
        (name = "appliances", description = "VPN appliances"),
        (name = "clients", description = "VPN clients"),
        (name = "advisories", description = "Operator-entered external risk"),
        (name = "sessions", description = "Shadowed session state"),
        (name = "risk", description = "Risk scores and their history"),
        (name = "decisions", description = "Steering audit trail"),
        (name = "model", description = "The running risk model"),
        (name = "replication", description = "Replication lag between regions, as this server's database sees it"),
        (name = "tokens", description = "Admin API tokens (admin scope)")
    )
)]
pub struct ApiDoc;

fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        )
        .build()
        .into()
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("post", item.post.as_mut()),
        ("patch", item.patch.as_mut()),
        ("put", item.put.as_mut()),
        ("delete", item.delete.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
}

/// Adds what every operation shares: the bearer scheme, and the error responses any route can
/// give (bad input, auth, overload; 404 where a path names a thing; 409/413 for changes).
pub fn finish(mut doc: Doc) -> Doc {
    let components = doc.components.get_or_insert_with(Default::default);
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("sst_<43 characters>")
                .build(),
        ),
    );
    doc.security = Some(vec![SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    for (path, item) in doc.paths.paths.iter_mut() {
        let named = path.contains('{');
        for (method, op) in operations(item) {
            let r = &mut op.responses.responses;
            let mut add = |code: &str, text: &str| {
                r.entry(code.to_owned())
                    .or_insert_with(|| error_response(text));
            };
            add(
                "400",
                "Bad input: the body, query or path is malformed or breaks a rule",
            );
            add("401", "No token, or not a valid token");
            add("403", "The token's scope does not allow this request");
            add(
                "503",
                "Overloaded, or the database is unreachable; retry after Retry-After seconds",
            );
            if named {
                add("404", "No such thing");
            }
            if method != "get" {
                add("409", "Conflicts with what is stored (duplicate, in use)");
                add("413", "Request body too large");
            }
        }
    }
    doc
}

async fn openapi_json(State(doc): State<Arc<Doc>>) -> impl IntoResponse {
    match doc.to_json() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => super::super::ApiError::internal(&e, false).into_response(),
    }
}

/// `GET /api/v1/openapi.json`.
pub fn router(doc: Arc<Doc>) -> Router<AppState> {
    Router::new().route(
        &format!("{}/openapi.json", super::BASE),
        get(openapi_json).with_state(doc),
    )
}
