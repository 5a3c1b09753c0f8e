//! Random operation sequences against MemoryStorage and a reference model.

use tier_conformance::model::{run_model, ModelSetup};
use tier_conformance::DynStorage;
use tier_memory::{MemoryConfig, MemoryStorage};

#[test]
fn memory_tier_matches_the_model() {
    let setup = ModelSetup::new(|| {
        Box::pin(async {
            let storage: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(
                MemoryConfig::new(64 << 20).shards(4),
            )));
            storage as DynStorage
        })
    });
    let result = run_model("memory", setup, 4000);
    assert_eq!(result.sequences, 4000);
}
