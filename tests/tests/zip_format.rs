//! The export's streaming zip writer, read back by two independent readers
//! (`lablink_e2e::read_zip`: Python's `zipfile` with `testzip()`, and Info-ZIP's
//! `unzip -t`, which also checks each local header against the central directory): plain entries, an entry announced as 4 GiB or
//! more (ZIP64 sizes from its local header on), and more than 65,535 entries (the ZIP64
//! end records). And a whole export of 20,000 small files under long paths, whose
//! central directory and manifest (both kept in temporary files while the zip is made)
//! must list every file.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use lablink_e2e::read_zip;
use lablink_export::zip::ZipWriter;
use lablink_export::{LocalStorage, VmPart};
use sha2::{Digest, Sha256};

#[test]
fn zip64_sizes_and_entry_counts_read_back() {
    let dir = tempfile::tempdir().unwrap();

    let path = dir.path().join("big-hint.zip");
    let mut z = ZipWriter::new(std::fs::File::create(&path).unwrap());
    z.entry("vm-1/plain.slp", 1_700_000_000, b"plain").unwrap();
    z.start_entry("vm-1/announced-huge.slp", 1_700_000_000, u32::MAX as u64 + 10)
        .unwrap();
    z.write_all(b"only a little").unwrap();
    z.finish_entry().unwrap();
    z.entry("manifest.csv", 1_700_000_000, b"hostname\r\n").unwrap();
    z.finish().unwrap();
    let r = read_zip(&path).unwrap();
    assert!(r["bad"].is_null(), "{r}");
    assert_eq!(r["sizes"]["vm-1/announced-huge.slp"], 13);
    assert_eq!(r["sizes"]["vm-1/plain.slp"], 5);

    let path = dir.path().join("many.zip");
    let mut z = ZipWriter::new(std::io::BufWriter::new(std::fs::File::create(&path).unwrap()));
    for i in 0..70_000 {
        z.entry(&format!("vm-{}/f{i}.slp", i % 7), 1_700_000_000, b"")
            .unwrap();
    }
    z.entry("manifest.csv", 1_700_000_000, b"x").unwrap();
    z.finish().unwrap();
    let r = read_zip(&path).unwrap();
    assert!(r["bad"].is_null());
    assert_eq!(r["names"].as_array().unwrap().len(), 70_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_files_under_long_paths_are_all_in_the_zip_and_its_manifest() {
    const JOB: &str = "20261124T000000Z-0a0a0a0a";
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage {
        dir: dir.path().to_path_buf(),
        base_url: String::new(),
        key: vec![],
    });
    let folder = format!("{}/{}", "results".repeat(14), "session".repeat(12));
    // "<hostname>/<path>" -> the file's bytes.
    let mut expected = BTreeMap::new();
    let mut parts = Vec::new();
    for v in 0..20 {
        let host = format!("vm-{v:02}");
        let path = storage.archive_path(JOB, &host);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut tar = tar::Builder::new(file);
        for f in 0..1_000 {
            let rel = format!("{folder}/labels.{f:04}.slp");
            let data = format!("{host} {f}").into_bytes();
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, &rel, data.as_slice()).unwrap();
            expected.insert(format!("{host}/{rel}"), data);
        }
        let manifest =
            br#"{"files":[],"skipped":[{"path":"huge.slp","bytes":99,"reason":"over the limit"}]}"#;
        let mut h = tar::Header::new_gnu();
        h.set_size(manifest.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, ".lablink-export-manifest.json", &manifest[..])
            .unwrap();
        tar.into_inner().unwrap().flush().unwrap();
        parts.push(VmPart {
            hostname: host,
            email: Some("p@uni.edu".into()),
            state: "done".into(),
            detail: None,
        });
    }
    assert!(expected.keys().all(|k| k.len() > 200));

    let sum = lablink_export::assemble(
        storage.clone(),
        JOB.into(),
        "lablink_data_many.zip".into(),
        parts,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!((sum.files, sum.skipped), (20_000, 20));

    let r = read_zip(&storage.zip_path(JOB, "lablink_data_many.zip")).unwrap();
    assert!(r["bad"].is_null(), "every CRC checks: {}", r["bad"]);
    let names: Vec<&str> = r["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 20_001);
    assert_eq!(names.last(), Some(&"manifest.csv"));
    for (name, data) in &expected {
        assert_eq!(r["sizes"][name], data.len(), "{name} in the central directory");
    }
    let manifest = r["manifest"].as_str().unwrap();
    let mut listed = BTreeMap::new();
    let mut skipped = 0;
    for line in manifest.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 7, "{line}");
        if cells[6].is_empty() {
            listed.insert(
                format!("{}/{}", cells[0], cells[2]),
                (cells[3].to_owned(), cells[4].to_owned()),
            );
        } else {
            assert_eq!(&cells[2..4], ["huge.slp", "99"]);
            skipped += 1;
        }
    }
    assert_eq!((listed.len(), skipped), (20_000, 20));
    for (name, data) in &expected {
        let sha = hex::encode(Sha256::digest(data));
        assert_eq!(
            listed[name],
            (data.len().to_string(), sha),
            "{name} in the manifest"
        );
    }
}
