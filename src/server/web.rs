//! The browser client (web-client/), embedded in the binary and served at `/`.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::App;

/// (path, content type, body) of every file of the client.
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../web-client/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web-client/app.js"),
    ),
    (
        "/mic-worklet.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web-client/mic-worklet.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../web-client/style.css"),
    ),
];

pub fn routes() -> Router<Arc<App>> {
    let mut router = Router::new();
    for (path, content_type, body) in FILES {
        router =
            router.route(
                path,
                get(move || async move {
                    ([(header::CONTENT_TYPE, *content_type)], *body).into_response()
                }),
            );
    }
    router
}
