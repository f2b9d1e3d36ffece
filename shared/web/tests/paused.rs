//! A paused deployment (LABLINK_PAUSED=true, docs/deploy.md "Between workshops"): every
//! route answers 503 with Retry-After and says how to resume, a page for a browser and
//! JSON for the API, without touching the database (here: one that cannot be reached).

use lablink_web::routes::{self, Route};
use lablink_web::{AppConfig, AppState, Body, Request};
use lambda_http::http::{Method, StatusCode, header};

/// The settings a paused function gets, with the database at an address nobody answers.
fn config(paused: bool) -> AppConfig {
    let paused = if paused { "true" } else { "false" };
    let mut s = lablink_core::config::Settings::from_pairs(&[
        ("LABLINK_PAUSED", paused),
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", "9"),
        ("PGUSER", "lablink_app"),
        ("PGDATABASE", "lablink"),
    ]);
    let cfg = AppConfig::read(&mut s);
    s.finish(|| cfg.expect("settings without errors build"))
        .expect("valid settings")
}

/// A request to `route` with its path parameters filled in.
fn request_to(route: &Route, accept_html: bool) -> Request {
    let path = route
        .path
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                "lablink-vm-test-1"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    let mut b = lambda_http::http::Request::builder()
        .method(route.verb.method())
        .uri(format!("https://example.test{path}"));
    if accept_html {
        b = b.header(header::ACCEPT, "text/html,application/xhtml+xml");
        if route.verb == routes::Verb::Post {
            b = b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
    } else {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    b.body(Body::from(if accept_html { "email=a%40b.org" } else { "{}" }))
        .unwrap()
}

fn body(r: &lambda_http::Response<Body>) -> String {
    String::from_utf8(r.body().to_vec()).unwrap()
}

#[tokio::test]
async fn every_route_of_a_paused_deployment_answers_503_with_how_to_resume() {
    let state = AppState::new(config(true));
    for route in routes::ALL {
        for browser in [false, true] {
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                route.handle(&state, request_to(&route, browser)),
            )
            .await
            .unwrap_or_else(|_| panic!("{route:?} waited for something while paused"));
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{route:?}");
            assert_eq!(r.headers()[header::RETRY_AFTER], "3600", "{route:?}");
            let text = body(&r);
            assert!(
                text.contains("scripts/deploy --env NAME --resume"),
                "{route:?}: {text}"
            );
            let content_type = r.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
            // A page for a browser, except for the API's reads (their callers are scripts).
            let page = browser && (!route.path.starts_with("/api/") || route.verb == routes::Verb::Post);
            if page {
                assert!(content_type.starts_with("text/html"), "{route:?}: {content_type}");
                assert!(text.contains("Paused between workshops"), "{route:?}");
            } else {
                assert_eq!(content_type, "application/json", "{route:?}");
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["status"], "paused", "{route:?}");
            }
        }
    }
}

#[tokio::test]
async fn health_says_paused_and_the_same_deployment_running_tries_its_database() {
    let health = routes::by_function("health").unwrap();
    let get = || request_to(&health, false);
    let paused = health.handle(&AppState::new(config(true)), get()).await;
    assert_eq!(paused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: serde_json::Value = serde_json::from_str(&body(&paused)).unwrap();
    assert_eq!(v["status"], "paused");
    // Not paused, the same settings reach for the (unreachable) database: the 503 above
    // was the pause, not the database.
    let running = health.handle(&AppState::new(config(false)), get()).await;
    assert_eq!(running.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = body(&running);
    assert!(
        text.contains("database unreachable") && !text.contains("paused"),
        "{text}"
    );
    // A wrong method is still refused as such.
    let mut post = get();
    *post.method_mut() = Method::POST;
    assert_eq!(
        health.handle(&AppState::new(config(true)), post).await.status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
}
