//! The dashboard at `/`: one HTML page, its script and style, and uPlot (vendored from the npm
//! registry with its licence, `dashboard/assets/vendor/`), all embedded in the binary so the
//! page works on an air-gapped network.
//!
//! The files are open (they hold no data); the page asks for a token (a form, or
//! `/#token=...` for a wall screen), keeps it in the tab's session storage and sends it only
//! as a bearer header to `/api/v1`, polling every 2 s. A strict Content-Security-Policy allows
//! nothing but this origin.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;

/// Page, script and style: (path, content type, body).
const ASSETS: [(&str, &str, &str); 5] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("dashboard/assets/index.html"),
    ),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/assets/app.js"),
    ),
    (
        "/assets/app.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/assets/app.css"),
    ),
    (
        "/assets/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/assets/vendor/uPlot.iife.min.js"),
    ),
    (
        "/assets/uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/assets/vendor/uPlot.min.css"),
    ),
];

/// uPlot's licence, served beside it.
const UPLOT_LICENSE: &str = include_str!("dashboard/assets/vendor/uPlot.LICENSE");

/// Only this origin; uPlot sets inline styles on the elements it draws.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse + Clone {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
}

/// The dashboard's routes.
pub fn router() -> Router<AppState> {
    let mut r = Router::new();
    for (path, content_type, body) in ASSETS {
        let response = asset(content_type, body);
        r = r.route(path, get(move || async move { response }));
    }
    let licence = asset("text/plain; charset=utf-8", UPLOT_LICENSE);
    r.route("/assets/uPlot.LICENSE", get(move || async move { licence }))
}
