//! The export's streaming zip writer, read back by two independent readers
//! (`lablink_e2e::read_zip`: Python's `zipfile` with `testzip()`, and Info-ZIP's
//! `unzip -t`, which also checks each local header against the central directory): plain entries, an entry announced as 4 GiB or
//! more (ZIP64 sizes from its local header on), and more than 65,535 entries (the ZIP64
//! end records).

use std::io::Write;

use lablink_e2e::read_zip;
use lablink_export::zip::ZipWriter;

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
