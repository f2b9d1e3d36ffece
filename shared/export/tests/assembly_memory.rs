//! The assembler's memory does not grow with the number of files: the same 20 VMs with
//! ten times the files (each under a ~200-byte path) must not raise the peak of the bytes
//! held on the heap while the zip is written. A counting global allocator measures it
//! (this file is its own test binary, with one test, so nothing else allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use lablink_export::VmPart;
use lablink_export::assemble::write_zip;
use lablink_export::storage::StorageError;
use lablink_export::zip::ZipWriter;

struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const VMS: usize = 20;

fn host(v: usize) -> String {
    format!("vm-{v:02}")
}

/// Each VM's archive as its daemon writes it: the files (16 bytes each, GNU long names),
/// then the manifest listing them and one skipped file.
fn write_archives(dir: &Path, files_per_vm: usize) {
    let folder = format!("{}/{}", "a".repeat(99), "b".repeat(80));
    for v in 0..VMS {
        let file = std::fs::File::create(dir.join(format!("{}.tar", host(v)))).unwrap();
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        let mut listed = Vec::new();
        for f in 0..files_per_vm {
            let path = format!("{folder}/session{f:05}.slp");
            let mut h = tar::Header::new_gnu();
            h.set_size(16);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, &path, &[7u8; 16][..]).unwrap();
            listed.push(serde_json::json!({
                "path": path, "bytes": 16, "sha256": "0".repeat(64), "modified": 1_700_000_000
            }));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "files": listed,
            "skipped": [{"path": "huge.slp", "bytes": 1u64 << 40, "reason": "over the size limit"}],
        }))
        .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(manifest.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, ".lablink-export-manifest.json", manifest.as_slice())
            .unwrap();
        tar.into_inner().unwrap();
    }
}

/// The most heap bytes held at once while the archives under `dir` are assembled into
/// a zip (written to nowhere), above what was held before; and the zip's entry count.
fn peak_while_assembling(dir: &Path) -> (usize, u64) {
    let parts: Vec<VmPart> = (0..VMS)
        .map(|v| VmPart {
            hostname: host(v),
            email: Some("p@uni.edu".into()),
            state: "done".into(),
            detail: None,
        })
        .collect();
    let mut open = |h: &str| -> Result<Option<Box<dyn Read + Send>>, StorageError> {
        let file = std::fs::File::open(dir.join(format!("{h}.tar"))).unwrap();
        Ok(Some(Box::new(std::io::BufReader::new(file))))
    };
    let before = HELD.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let mut zip = ZipWriter::new(std::io::sink());
    let sum = write_zip(&mut zip, &parts, &mut open, chrono::Utc::now()).unwrap();
    zip.finish().unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    (peak, sum.files)
}

#[test]
fn ten_times_the_files_hold_no_more_memory_while_assembling() {
    let small = tempfile::tempdir().unwrap();
    let large = tempfile::tempdir().unwrap();
    write_archives(small.path(), 100);
    write_archives(large.path(), 1_000);

    let (peak_small, files_small) = peak_while_assembling(small.path());
    let (peak_large, files_large) = peak_while_assembling(large.path());
    assert_eq!((files_small, files_large), (2_000, 20_000));
    println!("peak heap while assembling: {peak_small} bytes for 2,000 files, {peak_large} for 20,000");
    // What may grow is one VM's set of path digests (16 bytes a file, freed after that VM):
    // ~32 KiB here. Kept per file, the paths alone would be ~4 MB more.
    assert!(
        peak_large < peak_small + 256 * 1024,
        "the peak grew from {peak_small} to {peak_large} bytes with ten times the files"
    );
}
