//! Runnable examples of the tiers crates live beside this file; run one with
//! `cargo run --example NAME`. This library holds the code the `proxy`
//! example shares with its end-to-end test.

pub mod origin;
pub mod proxy;
