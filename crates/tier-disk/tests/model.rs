//! Random operation sequences, with closes and reopens, against DiskStorage
//! and a reference model: every finished write survives a reopen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tier_conformance::model::{run_model, ModelSetup};
use tier_conformance::DynStorage;
use tier_disk::{DiskConfig, DiskStorage, Durability};

fn config(dir: std::path::PathBuf) -> DiskConfig {
    // Small segments: 1,500 directories stay small on disk.
    DiskConfig::new(dir, 256 << 20)
        .block_size(4096)
        .segment_bytes(256 << 10)
        .durability(Durability::None)
}

#[test]
fn disk_tier_matches_the_model_across_reopens() {
    let root = Arc::new(tempfile::tempdir().expect("tempdir"));
    let next = Arc::new(AtomicU64::new(0));
    let fresh_root = root.clone();
    let setup = ModelSetup::new(move || {
        let dir = fresh_root
            .path()
            .join(next.fetch_add(1, Ordering::Relaxed).to_string());
        Box::pin(
            async move { DiskStorage::open(config(dir)).await.expect("open").leak() as DynStorage },
        )
    })
    .reopen(|storage| {
        let dir = storage
            .as_any()
            .downcast_ref::<DiskStorage>()
            .map(|disk| disk.config().dir().to_path_buf())
            .expect("the model runs on a DiskStorage");
        let disk = storage
            .as_any()
            .downcast_ref::<DiskStorage>()
            .expect("a DiskStorage");
        let closed = disk.close();
        Box::pin(async move {
            closed.await.expect("close");
            DiskStorage::open(config(dir)).await.expect("reopen").leak() as DynStorage
        })
    });
    let result = run_model("disk (with reopen)", setup, 1500);
    assert_eq!(result.sequences, 1500);
    drop(root);
}
