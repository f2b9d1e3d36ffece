//! Data export on the local stack, as an admin runs it: three local VMs (real client
//! daemons) with participants; their workspaces hold matching files, other files, a
//! symbolic link to a file outside the workspace and one file over the size limit; one
//! VM's daemon is stopped. The export's zip (read back with Python's `zipfile`, an
//! independent reader) holds exactly the matching files under each hostname, the
//! manifest's sha256 values match the files, the link's target is absent, the oversize
//! file is listed as skipped, and the stopped VM is reported unreachable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use lablink_e2e::{LocalStack, eventually, read_zip};
use lablink_testkit::TestDb;
use sha2::{Digest, Sha256};

const ADMIN: (&str, &str) = ("admin", "export-test-password-7d1e");

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn pseudo_random(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[(i % 4) ^ (seed as usize % 4)] ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_collects_every_vms_files_into_one_zip_and_reports_the_stopped_one() {
    let db = TestDb::new().await;
    let state = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let stack = LocalStack::start_with(
        &db.url,
        state.path(),
        3,
        ADMIN,
        &[
            ("LABLINK_EXPORT_WAIT_SECONDS", "12"),
            ("LABLINK_EXPORT_MAX_FILE_MB", "1"),
            ("LABLINK_EXPORT_EXTENSIONS", "slp"),
        ],
    )
    .await
    .unwrap();
    stack.wait_for_free_vms(3, Duration::from_secs(60)).await.unwrap();
    let http = reqwest::Client::new();
    let base = stack.url.clone();

    // Three participants, one VM each.
    let mut email_of = BTreeMap::new();
    for i in 0..3 {
        let email = format!("student{i}@uni.edu");
        let command = format!(
            "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"4/0AexportTest{i}\" \
             --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)"
        );
        let page = http
            .post(format!("{base}/api/request_vm"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                serde_urlencoded::to_string([("email", email.as_str()), ("crd_command", command.as_str())])
                    .unwrap(),
            )
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let at = page.find("id=\"hostname\">").unwrap() + 14;
        let host = page[at..at + page[at..].find('<').unwrap()].to_owned();
        email_of.insert(host, email);
    }
    let vms = stack.vms();
    assert_eq!(vms.len(), 3);
    let (h1, d1) = &vms[0];
    let (h2, d2) = &vms[1];
    let (h3, d3) = &vms[2];

    // Workspaces.
    let secret = b"outside the workspace: must never be exported";
    std::fs::write(outside.path().join("secret.slp"), secret).unwrap();
    let w1 = d1.join("workspace");
    let a = pseudo_random(300_000, 1);
    let b = pseudo_random(70_001, 2);
    write(&w1, "labels.v001.slp", &a);
    write(&w1, "session 2/predictions.slp", &b);
    write(&w1, "notes.txt", b"not an export");
    write(&w1, "huge.slp", &pseudo_random(1_200_000, 3));
    std::os::unix::fs::symlink(outside.path().join("secret.slp"), w1.join("stolen.slp")).unwrap();
    std::os::unix::fs::symlink(outside.path(), w1.join("elsewhere")).unwrap();
    let w2 = d2.join("workspace");
    let c = pseudo_random(5_000, 4);
    write(&w2, "Mouse.SLP", &c);
    write(&w2, "video.mp4", &pseudo_random(9_000, 5));
    write(&d3.join("workspace"), "never.slp", b"its daemon is stopped");
    stack.kill_daemon(d3).unwrap();

    // The admin starts the export (classic path, a script with HTTP Basic): 202 and the
    // job; again at once: the same job (one export at a time, a double click is one).
    let start = || async {
        let r = http
            .get(format!("{base}/api/scp-client"))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    };
    let (status, job) = start().await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let (again, same) = start().await;
    assert_eq!((again, same["id"].as_str()), (200, Some(id.as_str())));
    assert_eq!(
        http.get(format!("{base}/api/scp-client"))
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "no admin, no export"
    );

    let job = eventually("the export finishes", Duration::from_secs(90), || async {
        let v: serde_json::Value = http
            .get(format!("{base}/api/jobs/{id}"))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        ["succeeded", "failed"]
            .contains(&v["state"].as_str()?)
            .then_some(v)
    })
    .await
    .unwrap();
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let progress: BTreeMap<String, (String, i64)> = job["export_vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["hostname"].as_str().unwrap().to_owned(),
                (
                    v["state"].as_str().unwrap().to_owned(),
                    v["files"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(progress[h1], ("done".to_owned(), 2), "{job:#}");
    assert_eq!(progress[h2], ("done".to_owned(), 1), "{job:#}");
    assert_eq!(progress[h3].0, "unreachable", "{job:#}");

    // The download: admin only.
    let url = format!("{base}{}", job["download_url"].as_str().unwrap());
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    let resp = http
        .get(&url)
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let file = job["export"]["file"].as_str().unwrap();
    assert!(
        file.starts_with("lablink_data") && file.ends_with(".zip"),
        "{file}"
    );
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(file)
    );
    let bytes = resp.bytes().await.unwrap();
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret),
        "the link's target is not in the zip"
    );
    let zip = outside.path().join(file);
    std::fs::write(&zip, &bytes).unwrap();
    let z = read_zip(&zip).unwrap();
    assert!(z["bad"].is_null(), "every CRC checks out: {z}");
    let names: BTreeSet<&str> = z["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let expected: BTreeSet<String> = [
        format!("{h1}/labels.v001.slp"),
        format!("{h1}/session 2/predictions.slp"),
        format!("{h2}/Mouse.SLP"),
        "manifest.csv".to_owned(),
    ]
    .into();
    assert_eq!(
        names,
        expected.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );

    // manifest.csv: hostname, participant_email, path, bytes, sha256, modified_utc,
    // skipped_reason (no cell here needs quoting but "session 2/…", which has none).
    let manifest = z["manifest"].as_str().unwrap();
    let rows: Vec<Vec<&str>> = manifest.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0],
        [
            "hostname",
            "participant_email",
            "path",
            "bytes",
            "sha256",
            "modified_utc",
            "skipped_reason"
        ]
    );
    let row = |host: &str, path: &str| {
        rows.iter()
            .find(|r| r[0] == host && r[2] == path)
            .unwrap_or_else(|| panic!("no row for {host} {path}:\n{manifest}"))
            .clone()
    };
    for (host, path, data) in [
        (h1, "labels.v001.slp", &a),
        (h1, "session 2/predictions.slp", &b),
        (h2, "Mouse.SLP", &c),
    ] {
        let r = row(host, path);
        assert_eq!(r[1], email_of[host]);
        assert_eq!(r[3], data.len().to_string());
        assert_eq!(r[4], hex::encode(Sha256::digest(data)), "{host}/{path}");
        assert!(r[5].ends_with('Z') && r[6].is_empty(), "{r:?}");
    }
    let huge = row(h1, "huge.slp");
    assert!(huge[6].starts_with("over the 1048576-byte limit"), "{huge:?}");
    assert_eq!(huge[3], "1200000");
    assert!(row(h1, "stolen.slp")[6].contains("symbolic link"));
    let stopped = rows.iter().find(|r| r[0] == h3.as_str()).unwrap();
    assert!(stopped[6].starts_with("unreachable"), "{stopped:?}");
    assert_eq!(stopped[1], email_of[h3.as_str()]);
    assert!(!manifest.contains("notes.txt") && !manifest.contains("video.mp4"));

    // An upload URL is this VM's, for this export only: another VM's name on it, or a
    // forged signature, is refused, and changes nothing.
    let (pg, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let own: String = pg
        .query_one(
            "SELECT upload_url FROM export_vms WHERE job_id = $1 AND hostname = $2",
            &[&id, h1],
        )
        .await
        .unwrap()
        .get(0);
    let before = std::fs::read(state.path().join(format!("exports/{id}/vms/{h2}.tar"))).unwrap();
    for forged in [
        own.replace(&format!("/{h1}?"), &format!("/{h2}?")),
        format!("{}{}", &own[..own.len() - 4], "0000"),
    ] {
        let r = http.put(&forged).body("overwrite").send().await.unwrap();
        assert_eq!(r.status(), 403, "{forged}");
    }
    let after = std::fs::read(state.path().join(format!("exports/{id}/vms/{h2}.tar"))).unwrap();
    assert_eq!(before, after);

    let status = stack.interrupt(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status}");
}
