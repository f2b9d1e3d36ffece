//! Decoding a CloudWatch Logs subscription event (`{"awslogs":{"data":"<base64 gzip
//! JSON>"}}`, seed 003 §5) with hard bounds: the base64 text, the decompressed size and
//! the number of events are all capped, so a gzip bomb is refused after reading at most
//! the cap, never expanded. (`aws_lambda_events`' own `LogsEvent` decoder has no cap,
//! so only its inner `LogData` shape is used, after our bounded decompression.)

use std::io::Read;

use aws_lambda_events::event::cloudwatch_logs::LogData;
use base64::Engine;
use chrono::{DateTime, Utc};

use tokio_postgres::Client;

use lablink_core::domain::Hostname;
use lablink_db::DbError;
use lablink_db::logs::{self, LogLine};

/// CloudWatch delivers at most 1 MiB (compressed) per invocation; its JSON expands to a
/// few MiB. Anything past this is refused.
pub const MAX_DECOMPRESSED: usize = 16 * 1024 * 1024;
/// The base64 text of a subscription batch (Lambda's payload limit is 6 MiB).
pub const MAX_ENCODED: usize = 8 * 1024 * 1024;
/// PutLogEvents allows 10,000 events per call, so a batch has at most that many.
pub const MAX_EVENTS: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not a CloudWatch Logs subscription event: {0}")]
    Shape(String),
    #[error("the data is not base64: {0}")]
    Base64(String),
    #[error("the data is over {MAX_ENCODED} bytes of base64")]
    EncodedTooLarge,
    #[error("the data is not gzip: {0}")]
    Gzip(String),
    #[error("the data decompresses to more than {MAX_DECOMPRESSED} bytes; refused")]
    TooLarge,
    #[error("the decompressed data is not log data JSON: {0}")]
    Json(String),
    #[error("the batch has more than {MAX_EVENTS} events")]
    TooManyEvents,
    #[error("an event id is empty or longer than 128 characters")]
    BadEventId,
}

/// A decoded batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch {
    /// CloudWatch's subscription check; carries no log lines.
    Control,
    /// Lines of one VM's stream. `host` is `Err` when the stream name is not a valid
    /// hostname (the caller counts and drops it).
    Lines {
        log_group: String,
        stream: String,
        host: Option<Hostname>,
        lines: Vec<LogLine>,
    },
}

#[derive(serde::Deserialize)]
struct Outer {
    awslogs: Inner,
}

#[derive(serde::Deserialize)]
struct Inner {
    data: String,
}

/// Decode one subscription event (the Lambda payload, as JSON bytes).
pub fn decode(event: &[u8]) -> Result<Batch, DecodeError> {
    let outer: Outer = serde_json::from_slice(event).map_err(|e| DecodeError::Shape(e.to_string()))?;
    decode_data(&outer.awslogs.data)
}

/// Decode the `awslogs.data` text.
pub fn decode_data(data: &str) -> Result<Batch, DecodeError> {
    if data.len() > MAX_ENCODED {
        return Err(DecodeError::EncodedTooLarge);
    }
    let gz = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| DecodeError::Base64(e.to_string()))?;
    // Read one byte past the cap: reaching it means the input is over the limit.
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .take(MAX_DECOMPRESSED as u64 + 1)
        .read_to_end(&mut json)
        .map_err(|e| DecodeError::Gzip(e.to_string()))?;
    if json.len() > MAX_DECOMPRESSED {
        return Err(DecodeError::TooLarge);
    }
    let d: LogData = serde_json::from_slice(&json).map_err(|e| DecodeError::Json(e.to_string()))?;
    if d.message_type == "CONTROL_MESSAGE" {
        return Ok(Batch::Control);
    }
    if d.log_events.len() > MAX_EVENTS {
        return Err(DecodeError::TooManyEvents);
    }
    if d.log_events.iter().any(|e| e.id.is_empty() || e.id.len() > 128) {
        return Err(DecodeError::BadEventId);
    }
    let lines = d
        .log_events
        .into_iter()
        .map(|e| LogLine {
            logged_at: DateTime::<Utc>::from_timestamp_millis(e.timestamp).unwrap_or_else(Utc::now),
            event_id: e.id,
            message: e.message,
        })
        .collect();
    Ok(Batch::Lines {
        host: Hostname::parse(&d.log_stream).ok(),
        log_group: d.log_group,
        stream: d.log_stream,
        lines,
    })
}

/// What one invocation did (returned by the log-processor Lambda, and logged).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// Lines in the batch.
    pub received: usize,
    /// Lines that were new (a redelivered batch stores 0).
    pub stored: u64,
    pub control_message: bool,
    /// The stream of a batch whose VM is unknown (counted and dropped, not retried).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_stream: Option<String>,
    /// Why a malformed event was refused (logged; nothing written, not retried).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Decode one subscription event and append its lines in one round trip. Only a
/// database failure is an error (the Lambda then fails and the batch is retried, which
/// the event-id deduplication makes harmless); bad input and unknown VMs are outcomes.
pub async fn ingest(client: &Client, event: &[u8]) -> Result<Outcome, DbError> {
    match decode(event) {
        Err(e) => Ok(Outcome {
            refused: Some(e.to_string()),
            ..Outcome::default()
        }),
        Ok(Batch::Control) => Ok(Outcome {
            control_message: true,
            ..Outcome::default()
        }),
        Ok(Batch::Lines {
            host, stream, lines, ..
        }) => {
            let received = lines.len();
            let stored = match &host {
                Some(h) => logs::append(client, h, &lines).await?,
                None => None,
            };
            Ok(match stored {
                Some(stored) => Outcome {
                    received,
                    stored,
                    ..Outcome::default()
                },
                None => Outcome {
                    received,
                    unknown_stream: Some(stream),
                    ..Outcome::default()
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn encode(json: &[u8]) -> String {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(json).unwrap();
        base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
    }

    fn event(json: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "awslogs": { "data": encode(json.as_bytes()) } })).unwrap()
    }

    #[test]
    fn a_batch_decodes_to_its_vms_lines_in_order() {
        let e = event(
            r#"{"messageType":"DATA_MESSAGE","owner":"123456789012","logGroup":"lablink-cloud-init-test",
                "logStream":"lablink-vm-test-1","subscriptionFilters":["f"],
                "logEvents":[{"id":"1","timestamp":1763028000000,"message":"first"},
                             {"id":"2","timestamp":1763028001000,"message":"second"}]}"#,
        );
        let Batch::Lines {
            host,
            lines,
            log_group,
            ..
        } = decode(&e).unwrap()
        else {
            panic!("not lines")
        };
        assert_eq!(host.unwrap().as_str(), "lablink-vm-test-1");
        assert_eq!(log_group, "lablink-cloud-init-test");
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (lines[0].event_id.as_str(), lines[0].message.as_str()),
            ("1", "first")
        );
        assert_eq!(lines[1].logged_at.timestamp(), 1_763_028_001);
    }

    #[test]
    fn control_messages_and_bad_streams_are_told_apart() {
        let control = event(
            r#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"",
                "subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1,"message":"CWL CONTROL MESSAGE: Checking health of destination Lambda."}]}"#,
        );
        assert_eq!(decode(&control).unwrap(), Batch::Control);
        let bad = event(
            r#"{"messageType":"DATA_MESSAGE","owner":"o","logGroup":"g","logStream":"not a host!",
                "subscriptionFilters":[],"logEvents":[]}"#,
        );
        assert!(matches!(decode(&bad).unwrap(), Batch::Lines { host: None, .. }));
    }

    #[test]
    fn malformed_input_is_refused_with_the_reason() {
        assert!(matches!(decode(b"{}"), Err(DecodeError::Shape(_))));
        assert!(matches!(
            decode(br#"{"awslogs":{"data":"%%%"}}"#),
            Err(DecodeError::Base64(_))
        ));
        let not_gzip = base64::engine::general_purpose::STANDARD.encode(b"plain text");
        assert!(matches!(decode_data(&not_gzip), Err(DecodeError::Gzip(_))));
        assert!(matches!(
            decode_data(&encode(b"[1,2]")),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn a_gzip_bomb_is_refused_after_reading_at_most_the_cap() {
        // 64 MiB of zeros compress to about 64 KiB.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..64 {
            gz.write_all(&zeros).unwrap();
        }
        let data = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        assert!(data.len() < 200 * 1024);
        let t = std::time::Instant::now();
        assert_eq!(decode_data(&data), Err(DecodeError::TooLarge));
        eprintln!("bomb refused in {:?}", t.elapsed());
    }
}
