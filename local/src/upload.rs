//! `PUT /local-export/{job}/{host}?expires=…&sig=…`: the local stand-in for a presigned S3
//! PUT. The URL's HMAC binds it to one export, one VM and an expiry; the body is streamed
//! to `<state-dir>/exports/<job>/vms/<host>.tar` (written aside, renamed when complete),
//! never held in memory.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures_util::StreamExt;
use lablink_core::domain::Hostname;
use lablink_export::LocalStorage;
use lablink_ops::JobId;
use tokio::io::AsyncWriteExt;

#[derive(serde::Deserialize)]
pub struct Signed {
    expires: i64,
    sig: String,
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

pub async fn put_archive(
    storage: Arc<LocalStorage>,
    Path((job, host)): Path<(String, String)>,
    query: Result<Query<Signed>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Response {
    let Ok(Query(signed)) = query else {
        return refuse(StatusCode::FORBIDDEN, "this upload URL is not signed");
    };
    if JobId::parse(&job).is_err() || Hostname::parse(&host).is_err() {
        return refuse(StatusCode::BAD_REQUEST, "not an export upload path");
    }
    if !storage.verify(&job, &host, signed.expires, &signed.sig, Utc::now()) {
        return refuse(
            StatusCode::FORBIDDEN,
            "this upload URL is not valid for this VM and export, or it expired",
        );
    }
    let path = storage.archive_path(&job, &host);
    let partial = path.with_extension("tar.partial");
    let written = async {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file =
            tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::create(&partial).await?);
        let mut stream = body.into_data_stream();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            bytes += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        file.get_ref().sync_all().await?;
        tokio::fs::rename(&partial, &path).await?;
        Ok::<u64, std::io::Error>(bytes)
    }
    .await;
    match written {
        Ok(bytes) => {
            tracing::info!(%job, %host, bytes, "export archive received");
            StatusCode::OK.into_response()
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            tracing::warn!(%job, %host, error = %e, "export archive upload failed");
            refuse(StatusCode::BAD_REQUEST, &format!("the upload failed: {e}"))
        }
    }
}
