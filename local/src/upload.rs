//! `PUT /local-export/{job}/{host}?expires=…&sig=…`: the local stand-in for a presigned S3
//! PUT. The URL's HMAC binds it to one export, one VM and an expiry; the body is streamed
//! to `<state-dir>/exports/<job>/vms/<host>.tar` (written aside under a name of its own,
//! renamed when complete, so concurrent uploads never mix), never held in memory, and at
//! most [`MAX_UPLOAD_BYTES`] (S3's limit for one `PUT`, which a presigned URL has too).

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

/// The largest archive accepted: S3's limit for one `PUT` (5 GiB).
pub const MAX_UPLOAD_BYTES: u64 = 5 * 1024 * 1024 * 1024;

pub async fn put_archive(
    storage: Arc<LocalStorage>,
    path: Path<(String, String)>,
    query: Result<Query<Signed>, axum::extract::rejection::QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    receive(storage, path, query, &headers, body, MAX_UPLOAD_BYTES).await
}

/// [`put_archive`] with the size limit given (tests use a small one).
async fn receive(
    storage: Arc<LocalStorage>,
    Path((job, host)): Path<(String, String)>,
    query: Result<Query<Signed>, axum::extract::rejection::QueryRejection>,
    headers: &axum::http::HeaderMap,
    body: Body,
    limit: u64,
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
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("an archive is at most {limit} bytes"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large();
    }
    let path = storage.archive_path(&job, &host);
    // Its own name: a second upload of the same archive (a retry while the first still
    // runs) writes aside too, and the last complete one wins whole.
    let partial = path.with_extension(format!("tar.partial-{:016x}", rand::random::<u64>()));
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
            if bytes > limit {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::FileTooLarge,
                    "over the limit",
                ));
            }
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
            if e.kind() == std::io::ErrorKind::FileTooLarge {
                return too_large();
            }
            refuse(StatusCode::BAD_REQUEST, &format!("the upload failed: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lablink_export::ExportStorage;

    const JOB: &str = "20261202T070000Z-0a0b0c0d";

    async fn signed(storage: &LocalStorage) -> Query<Signed> {
        let host = Hostname::parse("vm-1").unwrap();
        let url = storage
            .upload_url(JOB, &host, std::time::Duration::from_secs(600))
            .await
            .unwrap();
        let q = url.split_once('?').unwrap().1;
        Query::try_from_uri(&format!("/x?{q}").parse().unwrap()).unwrap()
    }

    /// A body that arrives in `n` chunks of `byte`, yielding between them (as a slow
    /// network does), so two uploads interleave.
    fn slow_body(byte: u8, n: usize) -> Body {
        let chunks = futures_util::stream::iter(0..n).then(move |_| async move {
            tokio::task::yield_now().await;
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![byte; 1024]))
        });
        Body::from_stream(chunks)
    }

    fn leftovers(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect()
    }

    #[tokio::test]
    async fn concurrent_uploads_of_one_archive_never_mix_and_oversize_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(LocalStorage {
            dir: dir.path().to_path_buf(),
            base_url: "http://127.0.0.1:9".into(),
            key: vec![3; 32],
        });
        let path = || Path((JOB.to_owned(), "vm-1".to_owned()));
        let none = axum::http::HeaderMap::new();
        let (a, b) = tokio::join!(
            receive(
                storage.clone(),
                path(),
                Ok(signed(&storage).await),
                &none,
                slow_body(b'a', 64),
                1 << 20
            ),
            receive(
                storage.clone(),
                path(),
                Ok(signed(&storage).await),
                &none,
                slow_body(b'b', 64),
                1 << 20
            ),
        );
        assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
        let archive = storage.archive_path(JOB, "vm-1");
        let got = std::fs::read(&archive).unwrap();
        assert!(
            got == vec![b'a'; 64 * 1024] || got == vec![b'b'; 64 * 1024],
            "the archive is one upload whole, not a mix"
        );
        assert!(leftovers(archive.parent().unwrap()).is_empty());

        // Over the limit: refused (413) whether it says so up front or not, and the
        // archive already there is left as it was.
        let over = receive(
            storage.clone(),
            path(),
            Ok(signed(&storage).await),
            &none,
            slow_body(b'c', 8),
            4096,
        )
        .await;
        assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let mut declared = axum::http::HeaderMap::new();
        declared.insert(axum::http::header::CONTENT_LENGTH, "8192".parse().unwrap());
        let up_front = receive(
            storage.clone(),
            path(),
            Ok(signed(&storage).await),
            &declared,
            slow_body(b'c', 8),
            4096,
        )
        .await;
        assert_eq!(up_front.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(std::fs::read(&archive).unwrap(), got);
        assert!(leftovers(archive.parent().unwrap()).is_empty());
    }
}
