//! Runnable examples of the tiers crates live beside this file; run one with
//! `cargo run --example NAME`. This library holds the code the `proxy`
//! example shares with its end-to-end test.

pub mod origin;
pub mod proxy;

/// The root README's examples (the first is `minimal_proxy.rs`), compiled
/// as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// tier-redis's README example (it composes Redis under memory and disk,
/// crates tier-redis itself does not depend on).
#[cfg(doctest)]
#[doc = include_str!("../../crates/tier-redis/README.md")]
pub struct RedisReadmeDoctests;
