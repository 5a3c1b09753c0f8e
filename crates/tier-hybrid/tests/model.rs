//! Random operation sequences against the hybrid in both write policies and a
//! reference model, waiting for moves between steps.

use tier_conformance::model::{run_model, ModelSetup};
use tier_conformance::DynStorage;
use tier_hybrid::policy::{Policy, Promotion, WritePolicy};
use tier_hybrid::HybridStorage;
use tier_memory::{MemoryConfig, MemoryStorage};

type MemMem = HybridStorage<MemoryStorage, MemoryStorage>;

fn setup(write: WritePolicy) -> ModelSetup {
    ModelSetup::new(move || {
        Box::pin(async move {
            let tier = |n| -> &'static MemoryStorage {
                Box::leak(Box::new(MemoryStorage::new(MemoryConfig::new(n).shards(2))))
            };
            let policy = Policy::default()
                .write(write)
                .promotion(Promotion::OnNthHit(2));
            HybridStorage::new(tier(64 << 20), tier(64 << 20), policy).leak() as DynStorage
        })
    })
    .settle(|storage| {
        Box::pin(async move {
            if let Some(hybrid) = storage.as_any().downcast_ref::<MemMem>() {
                hybrid.wait_for_moves().await;
            }
        })
    })
    .eviction_keeps_entry()
}

#[test]
fn write_through_hybrid_matches_the_model() {
    assert_eq!(
        run_model(
            "hybrid write-through",
            setup(WritePolicy::WriteThrough),
            2500
        )
        .sequences,
        2500
    );
}

#[test]
fn write_back_hybrid_matches_the_model() {
    assert_eq!(
        run_model("hybrid write-back", setup(WritePolicy::WriteBack), 2500).sequences,
        2500
    );
}
