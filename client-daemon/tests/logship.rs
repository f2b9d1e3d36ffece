//! Shipping to CloudWatch Logs on `moto_server`: lines come back in order, and a stop
//! and restart in the middle of a file loses and duplicates nothing.

use std::path::Path;
use std::time::Duration;

use lablink_client_daemon::logship::{self, CloudWatchSink, Event, Sink, Source};
use lablink_testkit::moto;

/// The moto sink with a small batch size, so a file takes many batches, that asks the
/// shipper to stop once `stop_after` batches were accepted: a stop mid-file, whatever
/// the machine's speed.
struct Small {
    inner: CloudWatchSink,
    accepted: std::sync::atomic::AtomicUsize,
    stop_after: usize,
    stop: tokio::sync::watch::Sender<bool>,
}

#[async_trait::async_trait]
impl Sink for Small {
    fn max_batch_bytes(&self) -> usize {
        4_000
    }
    async fn put(&self, events: &[Event]) -> Result<(), String> {
        self.inner.put(events).await?;
        let n = self.accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n == self.stop_after {
            let _ = self.stop.send(true);
        }
        Ok(())
    }
}

async fn stored(client: &aws_sdk_cloudwatchlogs::Client, group: &str, stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let r = client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .set_next_token(token.clone())
            .send()
            .await;
        let Ok(r) = r else { return out };
        let n = r.events().len();
        out.extend(
            r.events()
                .iter()
                .map(|e| e.message().unwrap_or_default().to_owned()),
        );
        let next = r.next_forward_token().map(str::to_owned);
        if n == 0 || next == token {
            return out;
        }
        token = next;
    }
}

async fn wait_for(
    client: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    stream: &str,
    n: usize,
) -> Vec<String> {
    for _ in 0..300 {
        let got = stored(client, group, stream).await;
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stored(client, group, stream).await
}

fn append(path: &Path, from: usize, to: usize) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for i in from..to {
        writeln!(f, "line {i:05} {}", "x".repeat(i % 40)).unwrap();
    }
}

fn expected(to: usize) -> Vec<String> {
    (0..to)
        .map(|i| format!("line {i:05} {}", "x".repeat(i % 40)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_arrive_in_order_and_a_restart_mid_file_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("cloud-init-output.log");
    let cursor = dir.path().join("log-cursor.json");
    let group = format!("lablink-cloud-init-t{:08x}", rand::random::<u32>());
    let stream = "lablink-vm-001";
    let client = aws_sdk_cloudwatchlogs::Client::new(&moto::sdk_config());
    let sources = vec![Source {
        tag: "cloud-init".into(),
        path: log.clone(),
    }];
    append(&log, 0, 2_000);

    // First run: stopped part-way through the file.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sink = Small {
        inner: CloudWatchSink::new(client.clone(), &group, stream),
        accepted: Default::default(),
        stop_after: 8,
        stop,
    };
    let task = tokio::spawn({
        let (sources, cursor) = (sources.clone(), cursor.clone());
        async move { logship::run(sources, &sink, cursor, Duration::from_millis(50), stopped).await }
    });
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the shipper stops after its 8th batch")
        .unwrap();
    let after_stop = stored(&client, &group, stream).await;
    assert!(
        after_stop.len() >= 100 && after_stop.len() < 2_000,
        "stopped mid-file at {}",
        after_stop.len()
    );
    assert_eq!(after_stop, expected(after_stop.len()));

    // More lines while it was down, then a restart with the same cursor.
    append(&log, 2_000, 2_500);
    let (_stop2, stopped2) = tokio::sync::watch::channel(false);
    let sink = CloudWatchSink::new(client.clone(), &group, stream);
    let task = tokio::spawn({
        let (sources, cursor) = (sources.clone(), cursor.clone());
        async move { logship::run(sources, &sink, cursor, Duration::from_millis(50), stopped2).await }
    });
    let got = wait_for(&client, &group, stream, 2_500).await;
    // Give a straggler the chance to show up: there must be none.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_later = stored(&client, &group, stream).await;
    task.abort();
    assert_eq!(got.len(), 2_500);
    assert_eq!(got_later, expected(2_500), "every line once, in order");
}
