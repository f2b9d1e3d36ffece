//! Enrollment that survives a lost answer: the daemon enrolls again, keeps the second
//! credential with its hostname in one private file, and starts from that file.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::routing::post;

#[tokio::test]
async fn a_lost_enrollment_answer_is_retried_and_saved_whole() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/api/enroll",
        post({
            let calls = Arc::clone(&calls);
            move |body: String| {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(v["instance_id"], "i-0abc");
                    assert_eq!(v["enrollment_secret"], "launch-secret");
                    if n == 1 {
                        // The answer is cut on its way: no hostname and credential in it.
                        return "{\"hostn".to_owned();
                    }
                    format!("{{\"hostname\":\"lablink-vm-7\",\"credential\":\"credential-{n}\"}}")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let state = tempfile::tempdir().unwrap();
    let record = state.path().join("enrollment.json");
    let api: reqwest::Url = format!("http://{addr}/").parse().unwrap();
    let host = lablink_client_daemon::enroll::enroll(&lablink_client_daemon::enroll::Enrollment {
        api_url: &api,
        secret: "launch-secret",
        instance_id: Some("i-0abc"),
        record_file: &record,
    })
    .await;
    assert_eq!(host, "lablink-vm-7");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "enrolled again after the lost answer"
    );
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(saved["hostname"], "lablink-vm-7");
    assert_eq!(saved["credential"], "credential-2");
    let mode = std::fs::metadata(&record).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["enrollment.json"], "no temporary file left behind");

    // A restart starts from the record: no enrollment, that hostname and credential.
    let args = <lablink_client_daemon::config::Args as clap::Parser>::try_parse_from([
        "lablink-client-daemon",
        "--api-url",
        api.as_ref(),
        "--enroll-secret",
        "launch-secret",
        "--state-dir",
        state.path().to_str().unwrap(),
        "--credential-file",
        state.path().join("absent").to_str().unwrap(),
    ])
    .unwrap();
    assert!(!args.needs_enrollment());
    let cfg = args.into_config().unwrap();
    assert_eq!(cfg.hostname.as_str(), "lablink-vm-7");
    assert_eq!(cfg.credential.as_deref(), Some("credential-2"));
}

/// A VM that asks before its launch job recorded it (the local runner's VMs start at
/// once) is refused at first: it asks again within seconds, not after five minutes.
#[tokio::test]
async fn an_enrollment_refused_before_the_launch_recorded_the_vm_is_retried_soon() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/api/enroll",
        post({
            let calls = Arc::clone(&calls);
            move || {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if n <= 2 {
                        return (
                            axum::http::StatusCode::FORBIDDEN,
                            "{\"error\":\"the enrollment secret is not this instance's launch job's\"}"
                                .to_owned(),
                        );
                    }
                    (
                        axum::http::StatusCode::OK,
                        "{\"hostname\":\"lablink-vm-8\",\"credential\":\"c\"}".to_owned(),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let state = tempfile::tempdir().unwrap();
    let api: reqwest::Url = format!("http://{addr}/").parse().unwrap();
    let enrolled = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        lablink_client_daemon::enroll::enroll(&lablink_client_daemon::enroll::Enrollment {
            api_url: &api,
            secret: "launch-secret",
            instance_id: Some("i-0def"),
            record_file: &state.path().join("enrollment.json"),
        }),
    )
    .await
    .expect("enrolled after two refusals, without a five-minute wait");
    assert_eq!(enrolled, "lablink-vm-8");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
