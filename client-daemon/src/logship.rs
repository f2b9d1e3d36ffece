//! Log shipping: follow log files (cloud-init's output, this daemon's own log) and send
//! their new lines to a sink:
//!
//! - [`CloudWatchSink`]: `PutLogEvents` to group `lablink-cloud-init-<env>`, stream =
//!   hostname, creating both when missing (the log group's subscription feeds the
//!   log-processor Lambda);
//! - [`HttpSink`]: `POST /api/vm-logs` with the VM's own credential (running without
//!   AWS); event ids are `<tag>:<inode>:<offset>`, so the server drops a resent line.
//!
//! A batch stays within `PutLogEvents`' limits (at most 10,000 events, 1 MiB counting 26
//! bytes per event, chronological, within 24 hours). A cursor per file (inode, byte
//! offset of the next unsent line) is written to the state dir after each accepted
//! batch, so a restart neither loses nor resends lines. Only complete lines are sent; a
//! truncated or replaced file (new inode, or shorter than the cursor) starts over at 0.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Backoff;

/// PutLogEvents: per-event overhead counted against the batch size.
pub const EVENT_OVERHEAD: usize = 26;
pub const MAX_BATCH_EVENTS: usize = 10_000;
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// PutLogEvents refuses events over 256 KiB (with the overhead): longer lines are cut.
pub const MAX_EVENT_BYTES: usize = 256 * 1024 - EVENT_OVERHEAD;

/// One followed file.
#[derive(Debug, Clone)]
pub struct Source {
    /// Short name used in event ids and the cursor (`cloud-init`, `daemon`).
    pub tag: String,
    pub path: PathBuf,
}

/// A line to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub timestamp: DateTime<Utc>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePos {
    pub inode: u64,
    pub offset: u64,
}

/// Where each file has been sent up to; persisted as `log-cursor.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub files: BTreeMap<String, FilePos>,
}

impl Cursor {
    pub fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let f = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&f, self)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

/// Somewhere lines go. `put` succeeds only when every event was accepted.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// The most bytes (messages plus [`EVENT_OVERHEAD`] each) one batch may carry.
    fn max_batch_bytes(&self) -> usize;
    async fn put(&self, events: &[Event]) -> Result<(), String>;
}

/// Read the next batch: complete lines after each file's cursor, in file order, within
/// `max_bytes` and [`MAX_BATCH_EVENTS`]. Returns the events and the cursor after them.
pub fn next_batch(
    sources: &[Source],
    cursor: &Cursor,
    max_bytes: usize,
    now: DateTime<Utc>,
) -> (Vec<Event>, Cursor) {
    let mut events = Vec::new();
    let mut next = cursor.clone();
    let mut bytes = 0usize;
    for s in sources {
        let Ok(mut f) = std::fs::File::open(&s.path) else {
            continue;
        };
        let Ok(meta) = f.metadata() else { continue };
        let mut pos = cursor.files.get(&s.tag).copied().unwrap_or_default();
        if pos.inode != meta.ino() || pos.offset > meta.len() {
            // A new or truncated file: from its start.
            pos = FilePos {
                inode: meta.ino(),
                offset: 0,
            };
        }
        if pos.offset == meta.len() {
            next.files.insert(s.tag.clone(), pos);
            continue;
        }
        let budget = (max_bytes.saturating_sub(bytes)).min(4 * 1024 * 1024) as u64;
        if budget == 0 || f.seek(SeekFrom::Start(pos.offset)).is_err() {
            break;
        }
        let mut buf = Vec::new();
        // A line may be longer than the budget: read a bit more so it can be cut.
        if (&mut f)
            .take(budget.max(MAX_EVENT_BYTES as u64 + 1))
            .read_to_end(&mut buf)
            .is_err()
        {
            continue;
        }
        let mut at = 0usize;
        while let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') {
            let line = &buf[at..at + nl];
            let text = String::from_utf8_lossy(line);
            let mut message = text.trim_end_matches('\r').to_owned();
            if message.len() > MAX_EVENT_BYTES {
                let mut cut = MAX_EVENT_BYTES;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
            }
            let cost = message.len() + EVENT_OVERHEAD;
            if events.len() == MAX_BATCH_EVENTS || (bytes + cost > max_bytes && !events.is_empty()) {
                break;
            }
            let offset = pos.offset + at as u64;
            events.push(Event {
                id: format!("{}:{}:{}", s.tag, pos.inode, offset),
                timestamp: now,
                message,
            });
            bytes += cost;
            at += nl + 1;
        }
        next.files.insert(
            s.tag.clone(),
            FilePos {
                inode: pos.inode,
                offset: pos.offset + at as u64,
            },
        );
        if events.len() == MAX_BATCH_EVENTS || bytes >= max_bytes {
            break;
        }
    }
    (events, next)
}

/// Ship until `stop` turns true: a batch, its acceptance (retried with backoff), the
/// cursor; idle polls every `poll`. A batch in flight is finished (and its cursor saved)
/// before stopping, so a stop and restart resends nothing. (Killed outright between
/// CloudWatch accepting a batch and the cursor's write, that one batch is sent again;
/// the HTTP sink's event ids make even that harmless.)
pub async fn run(
    sources: Vec<Source>,
    sink: &dyn Sink,
    cursor_file: PathBuf,
    poll: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut cursor = Cursor::load(&cursor_file);
    let mut backoff = Backoff::new();
    while !*stop.borrow() {
        let (events, next) = next_batch(&sources, &cursor, sink.max_batch_bytes(), Utc::now());
        if events.is_empty() {
            if next != cursor {
                cursor = next;
                let _ = cursor.save(&cursor_file);
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        match sink.put(&events).await {
            Ok(()) => {
                backoff.reset();
                cursor = next;
                if let Err(e) = cursor.save(&cursor_file) {
                    tracing::warn!(error = %e, "cannot save the log cursor");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, lines = events.len(), "shipping logs failed; retrying");
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// CloudWatch Logs (`aws-sdk-cloudwatchlogs`).
pub struct CloudWatchSink {
    client: aws_sdk_cloudwatchlogs::Client,
    group: String,
    stream: String,
    ready: tokio::sync::OnceCell<()>,
}

impl CloudWatchSink {
    pub fn new(client: aws_sdk_cloudwatchlogs::Client, group: &str, stream: &str) -> Self {
        Self {
            client,
            group: group.to_owned(),
            stream: stream.to_owned(),
            ready: tokio::sync::OnceCell::new(),
        }
    }

    /// Create the group and the stream unless they exist.
    async fn ensure(&self) -> Result<(), String> {
        use aws_sdk_cloudwatchlogs::error::DisplayErrorContext;
        if let Err(e) = self
            .client
            .create_log_group()
            .log_group_name(&self.group)
            .send()
            .await
        {
            let se = e.into_service_error();
            if !se.is_resource_already_exists_exception() {
                return Err(DisplayErrorContext(se).to_string());
            }
        }
        if let Err(e) = self
            .client
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .send()
            .await
        {
            let se = e.into_service_error();
            if !se.is_resource_already_exists_exception() {
                return Err(DisplayErrorContext(se).to_string());
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for CloudWatchSink {
    fn max_batch_bytes(&self) -> usize {
        MAX_BATCH_BYTES
    }

    async fn put(&self, events: &[Event]) -> Result<(), String> {
        use aws_sdk_cloudwatchlogs::error::DisplayErrorContext;
        use aws_sdk_cloudwatchlogs::types::InputLogEvent;
        self.ready.get_or_try_init(|| self.ensure()).await?;
        let input: Vec<InputLogEvent> = events
            .iter()
            .map(|e| {
                InputLogEvent::builder()
                    .timestamp(e.timestamp.timestamp_millis())
                    .message(if e.message.is_empty() {
                        " ".to_owned()
                    } else {
                        e.message.clone()
                    })
                    .build()
                    .expect("timestamp and message set")
            })
            .collect();
        match self
            .client
            .put_log_events()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .set_log_events(Some(input))
            .send()
            .await
        {
            Ok(out) => match out.rejected_log_events_info() {
                // Too old/new events are dropped by CloudWatch itself; sending them
                // again would not help.
                Some(r) => {
                    tracing::warn!(?r, "CloudWatch rejected some events");
                    Ok(())
                }
                None => Ok(()),
            },
            Err(e) => {
                let se = e.into_service_error();
                if se.is_resource_not_found_exception() {
                    // Deleted under us: create again on the retry.
                    let _ = self.ensure().await;
                }
                Err(DisplayErrorContext(se).to_string())
            }
        }
    }
}

/// `POST /api/vm-logs` with the VM's credential.
pub struct HttpSink {
    http: reqwest::Client,
    url: String,
    credential: Option<String>,
    group: String,
    stream: String,
}

impl HttpSink {
    pub fn new(api_url: &reqwest::Url, credential: Option<String>, group: &str, stream: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(60))
                .build()
                .expect("the HTTP client builds with static settings"),
            url: format!("{}/api/vm-logs", api_url.as_str().trim_end_matches('/')),
            credential,
            group: group.to_owned(),
            stream: stream.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl Sink for HttpSink {
    /// The route takes 1 MiB of JSON; ids, timestamps and escaping need room.
    fn max_batch_bytes(&self) -> usize {
        MAX_BATCH_BYTES / 3
    }

    async fn put(&self, events: &[Event]) -> Result<(), String> {
        let body = lablink_wire::LogBatch {
            log_group: Some(self.group.clone()),
            log_stream: self.stream.clone(),
            messages: events.iter().map(|e| e.message.clone()).collect(),
            event_ids: Some(events.iter().map(|e| e.id.clone()).collect()),
            timestamps: Some(events.iter().map(|e| e.timestamp).collect()),
        };
        let mut req = self.http.post(&self.url).json(&body);
        if let Some(c) = &self.credential {
            req = req.bearer_auth(c);
        }
        let resp = req.send().await.map_err(|e| format!("{}: {e}", self.url))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            let status = resp.status();
            Err(format!(
                "{} answered {status}: {}",
                self.url,
                resp.text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect::<String>()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_byte_and_line_limits_and_only_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, "one\ntwo\nthree\npartial").unwrap();
        let src = vec![Source {
            tag: "a".into(),
            path: p.clone(),
        }];
        let (ev, c) = next_batch(&src, &Cursor::default(), MAX_BATCH_BYTES, Utc::now());
        assert_eq!(
            ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["one", "two", "three"]
        );
        assert_eq!(c.files["a"].offset, 14);
        // A byte budget of two events' worth gives two lines.
        let (ev2, c2) = next_batch(&src, &Cursor::default(), 2 * (EVENT_OVERHEAD + 3), Utc::now());
        assert_eq!(ev2.len(), 2);
        assert_eq!(c2.files["a"].offset, 8);
        assert_eq!(ev2[1].id, ev[1].id, "ids are stable: tag, inode, offset");
        // Nothing new until the partial line ends.
        let (none, _) = next_batch(&src, &c, MAX_BATCH_BYTES, Utc::now());
        assert!(none.is_empty());
        std::fs::write(&p, "one\ntwo\nthree\npartial line\n").unwrap();
        let (ev3, _) = next_batch(&src, &c, MAX_BATCH_BYTES, Utc::now());
        assert_eq!(ev3[0].message, "partial line");
        // Truncated: from the start again.
        std::fs::write(&p, "new\n").unwrap();
        let (ev4, _) = next_batch(&src, &c, MAX_BATCH_BYTES, Utc::now());
        assert_eq!(ev4[0].message, "new");
    }

    #[test]
    fn ten_thousand_events_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.log");
        std::fs::write(&p, "x\n".repeat(12_000)).unwrap();
        let src = vec![Source {
            tag: "b".into(),
            path: p,
        }];
        let (ev, c) = next_batch(&src, &Cursor::default(), MAX_BATCH_BYTES, Utc::now());
        assert_eq!(ev.len(), MAX_BATCH_EVENTS);
        let (rest, _) = next_batch(&src, &c, MAX_BATCH_BYTES, Utc::now());
        assert_eq!(rest.len(), 2_000);
    }
}
