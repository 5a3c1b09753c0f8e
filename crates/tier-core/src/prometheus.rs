//! A tier's report as Prometheus metrics (feature `prometheus`), for the
//! registry pingora's own metrics service serves.
//!
//! ```
//! # fn main() -> prometheus::Result<()> {
//! // Any tier, or a whole hybrid with its levels: here a plain storage.
//! let cache: &'static tier_core::PlainTier<pingora_cache::MemCache> = Box::leak(Box::new(
//!     tier_core::PlainTier::new("memcache", pingora_cache::MemCache::new()),
//! ));
//! // One line per cache.
//! tier_core::prometheus::register(prometheus::default_registry(), "edge", cache)?;
//! # Ok(())
//! # }
//! ```
//!
//! Every scrape asks the tier for a fresh [`TierReport`]. A tier that stores
//! entries is labelled `level="L1"`, `"L2"`, … in the order a lookup reaches
//! it (a hybrid's hot tier first); a composition is labelled with the span of
//! its levels (`"L1-L2"`). Metrics, each with the labels `cache` (the name
//! given to [`register`]), `tier` (the tier's name) and `level`:
//!
//! | metric | type | extra label | of |
//! |---|---|---|---|
//! | `tiers_lookups_total` | counter | `result` = `hit` / `miss` | tiers that store |
//! | `tiers_inserts_total`, `tiers_evictions_total`, `tiers_rejections_total`, `tiers_errors_total` | counter | | tiers that store |
//! | `tiers_entries`, `tiers_bytes` | gauge | | tiers that store |
//! | `tiers_events_total` | counter | `event` | a tier's own counters (a hybrid's promotions, a disk tier's syncs) |
//! | `tiers_state` | gauge | `what` | a tier's own gauges |
//! | `tiers_latency_seconds` | histogram | `op` = `hit` / `miss` / `write` | tiers that time them |

use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::Registry;

use crate::report::{LatencySnapshot, TierReport, LATENCY_BUCKETS};
use crate::tier::Tier;

/// Register `tier` (a single tier or a composition) in `registry` under the
/// label `cache="<cache>"`. Several caches may share a registry if their
/// names differ.
pub fn register(
    registry: &Registry,
    cache: &str,
    tier: &'static dyn Tier,
) -> prometheus::Result<()> {
    registry.register(Box::new(TierCollector::new(cache, tier)?))
}

/// A Prometheus collector reading a tier's [`TierReport`] at every scrape.
pub struct TierCollector {
    cache: String,
    tier: &'static dyn Tier,
    descs: Vec<Desc>,
}

impl std::fmt::Debug for TierCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierCollector")
            .field("cache", &self.cache)
            .field("tier", &self.tier.tier_name())
            .finish_non_exhaustive()
    }
}

/// Name, help, and the label beyond `cache`, `tier` and `level`.
const FAMILIES: [(&str, &str, Option<&str>); 10] = [
    ("tiers_lookups_total", "Lookups, by result", Some("result")),
    (
        "tiers_inserts_total",
        "Writes that published an entry",
        None,
    ),
    (
        "tiers_evictions_total",
        "Entries removed to stay within bounds",
        None,
    ),
    (
        "tiers_rejections_total",
        "Writes refused (over a limit)",
        None,
    ),
    ("tiers_errors_total", "Operations that failed", None),
    ("tiers_entries", "Entries stored now", None),
    ("tiers_bytes", "Bytes charged against capacity now", None),
    (
        "tiers_events_total",
        "A tier's own counters, by event",
        Some("event"),
    ),
    ("tiers_state", "A tier's own gauges", Some("what")),
    (
        "tiers_latency_seconds",
        "Time a tier took, by operation",
        Some("op"),
    ),
];

impl TierCollector {
    /// A collector of `tier` labelled `cache="<cache>"`.
    pub fn new(cache: &str, tier: &'static dyn Tier) -> prometheus::Result<Self> {
        let mut descs = Vec::with_capacity(FAMILIES.len());
        for (name, help, extra) in FAMILIES {
            let mut labels = vec!["tier".to_string(), "level".to_string()];
            labels.extend(extra.map(str::to_string));
            let constant = [("cache".to_string(), cache.to_string())].into();
            descs.push(Desc::new(name.into(), help.into(), labels, constant)?);
        }
        Ok(TierCollector {
            cache: cache.to_string(),
            tier,
            descs,
        })
    }
}

impl Collector for TierCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families_of(&self.cache, &self.tier.report())
    }
}

/// `report` as metric families labelled `cache="<cache>"`.
fn families_of(cache: &str, report: &TierReport) -> Vec<MetricFamily> {
    let mut out = Families::default();
    let mut next_leaf = 1;
    out.walk(cache, report, &mut next_leaf);
    out.finish()
}

/// The families being filled, in the order of [`FAMILIES`].
#[derive(Default)]
struct Families {
    metrics: [Vec<Metric>; FAMILIES.len()],
}

impl Families {
    /// Add `report` and its levels; returns the span of levels it covers.
    fn walk(&mut self, cache: &str, report: &TierReport, next_leaf: &mut usize) -> String {
        let level = if report.levels.is_empty() {
            let level = format!("L{next_leaf}");
            *next_leaf += 1;
            level
        } else {
            let first = *next_leaf;
            for child in &report.levels {
                self.walk(cache, child, next_leaf);
            }
            format!("L{first}-L{}", *next_leaf - 1)
        };
        let base = [
            ("cache", cache),
            ("tier", report.name.as_str()),
            ("level", &level),
        ];
        let with = |extra: Option<(&str, &str)>| {
            let mut pairs: Vec<(&str, &str)> = base.to_vec();
            pairs.extend(extra);
            labels(&pairs)
        };
        if report.levels.is_empty() {
            let s = &report.stats;
            self.metrics[0].push(counter(with(Some(("result", "hit"))), s.hits));
            self.metrics[0].push(counter(with(Some(("result", "miss"))), s.misses));
            self.metrics[1].push(counter(with(None), s.inserts));
            self.metrics[2].push(counter(with(None), s.evictions));
            self.metrics[3].push(counter(with(None), s.rejections));
            self.metrics[4].push(counter(with(None), s.errors));
            self.metrics[5].push(gauge(with(None), s.entries));
            self.metrics[6].push(gauge(with(None), s.bytes));
        }
        for c in &report.counters {
            self.metrics[7].push(counter(with(Some(("event", c.name))), c.value));
        }
        for g in &report.gauges {
            self.metrics[8].push(gauge(with(Some(("what", g.name))), g.value));
        }
        for (op, snapshot) in &report.latencies {
            self.metrics[9].push(histogram(with(Some(("op", op))), snapshot));
        }
        level
    }

    fn finish(self) -> Vec<MetricFamily> {
        FAMILIES
            .iter()
            .zip(self.metrics)
            .filter(|(_, metrics)| !metrics.is_empty())
            .map(|((name, help, _), metrics)| {
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                family.set_field_type(if name.ends_with("_total") {
                    MetricType::COUNTER
                } else if name.ends_with("_seconds") {
                    MetricType::HISTOGRAM
                } else {
                    MetricType::GAUGE
                });
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    let mut out: Vec<LabelPair> = pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect();
    out.sort_by(|a, b| a.name().cmp(b.name()));
    out
}

fn counter(labels: Vec<LabelPair>, value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_counter(c);
    m
}

fn gauge(labels: Vec<LabelPair>, value: u64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value as f64);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_gauge(g);
    m
}

fn histogram(labels: Vec<LabelPair>, snapshot: &LatencySnapshot) -> Metric {
    let mut h = Histogram::default();
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(LATENCY_BUCKETS);
    for (i, count) in snapshot.counts.iter().enumerate() {
        cumulative += count;
        if let Some(bound) = LatencySnapshot::upper_bound(i) {
            let mut b = Bucket::default();
            b.set_upper_bound(bound.as_secs_f64());
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
    }
    h.set_bucket(buckets);
    h.set_sample_count(cumulative);
    h.set_sample_sum(snapshot.sum.as_secs_f64());
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_histogram(h);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::LatencyHistogram;
    use crate::TierStats;
    use prometheus::{Encoder, TextEncoder};
    use std::time::Duration;

    /// A two-level tree, as a hybrid of memory over disk reports.
    fn hybrid_report() -> TierReport {
        let h = LatencyHistogram::new();
        h.record(Duration::from_micros(3));
        h.record(Duration::from_secs(20));
        let memory = TierStats {
            hits: 5,
            bytes: 4096,
            ..TierStats::default()
        };
        let disk = TierStats {
            misses: 2,
            ..TierStats::default()
        };
        TierReport::new("hybrid", TierStats::default())
            .counter("promotions", "copied up", 3)
            .level(TierReport::new("memory", memory))
            .level(
                TierReport::new("disk", disk)
                    .gauge("segments", "segment files", 4)
                    .latency("hit", &h),
            )
    }

    fn text_of(families: &[MetricFamily]) -> String {
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(families, &mut text)
            .expect("encode");
        String::from_utf8(text).expect("utf8")
    }

    #[test]
    fn a_hybrid_scrapes_as_labelled_levels() {
        let text = text_of(&families_of("edge", &hybrid_report()));
        for line in [
            r#"tiers_lookups_total{cache="edge",level="L1",result="hit",tier="memory"} 5"#,
            r#"tiers_lookups_total{cache="edge",level="L2",result="miss",tier="disk"} 2"#,
            r#"tiers_bytes{cache="edge",level="L1",tier="memory"} 4096"#,
            r#"tiers_events_total{cache="edge",event="promotions",level="L1-L2",tier="hybrid"} 3"#,
            r#"tiers_state{cache="edge",level="L2",tier="disk",what="segments"} 4"#,
            r#"tiers_latency_seconds_bucket{cache="edge",level="L2",op="hit",tier="disk",le="0.000004"} 1"#,
            r#"tiers_latency_seconds_bucket{cache="edge",level="L2",op="hit",tier="disk",le="+Inf"} 2"#,
            r#"tiers_latency_seconds_count{cache="edge",level="L2",op="hit",tier="disk"} 2"#,
            "# TYPE tiers_latency_seconds histogram",
            "# TYPE tiers_lookups_total counter",
            "# TYPE tiers_bytes gauge",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // A composition reports no lookups of its own (its levels do).
        assert!(!text.contains(r#"level="L1-L2",result"#), "{text}");
    }

    #[test]
    fn caches_register_once_each_by_name() {
        let tier: &'static crate::PlainTier<pingora_cache::MemCache> = Box::leak(Box::new(
            crate::PlainTier::new("plain", pingora_cache::MemCache::new()),
        ));
        let registry = Registry::new();
        register(&registry, "edge", tier).expect("register");
        assert!(
            register(&registry, "edge", tier).is_err(),
            "the same name twice"
        );
        register(&registry, "origin-shield", tier).expect("another name");
        let text = text_of(&registry.gather());
        for cache in ["edge", "origin-shield"] {
            let line = format!(
                r#"tiers_lookups_total{{cache="{cache}",level="L1",result="hit",tier="plain"}} 0"#
            );
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }
}
