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

/// Set to a web-client/ folder to serve the files from disk, read on each
/// request, instead of the copies built into the binary (for working on the
/// client without rebuilding).
pub const WEB_DIR_ENV: &str = "DUPLEX_WEB_DIR";

pub fn routes() -> Router<Arc<App>> {
    let dir = std::env::var_os(WEB_DIR_ENV).map(std::path::PathBuf::from);
    if let Some(dir) = &dir {
        tracing::info!("serving the web client from {}", dir.display());
    }
    let mut router = Router::new();
    for (path, content_type, body) in FILES {
        let file = dir.as_ref().map(|d| {
            let name = path.trim_start_matches('/');
            d.join(if name.is_empty() { "index.html" } else { name })
        });
        router = router.route(
            path,
            get(move || async move {
                let body = match &file {
                    Some(file) => match tokio::fs::read_to_string(file).await {
                        Ok(text) => text,
                        Err(e) => {
                            return (
                                axum::http::StatusCode::NOT_FOUND,
                                format!("{}: {e}", file.display()),
                            )
                                .into_response();
                        }
                    },
                    None => body.to_string(),
                };
                ([(header::CONTENT_TYPE, *content_type)], body).into_response()
            }),
        );
    }
    router
}
