//! [`MemoryConfig`]: the memory tier's knobs, with defaults that run.

/// The largest body the tier stores, whatever the configuration says.
const MAX_OBJECT_BYTES: usize = 3 << 30;

/// Configuration of a [`MemoryStorage`](crate::MemoryStorage).
///
/// ```
/// use tier_memory::MemoryConfig;
///
/// let config = MemoryConfig::new(512 << 20) // 512 MiB in all
///     .max_object_bytes(16 << 20)           // refuse bodies over 16 MiB
///     .name("edge-memory");
/// assert_eq!(config.capacity_bytes(), 512 << 20);
/// ```
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    pub(crate) capacity_bytes: usize,
    pub(crate) max_object_bytes: Option<usize>,
    pub(crate) shards: Option<usize>,
    pub(crate) name: String,
    pub(crate) small_queue_percent: usize,
    pub(crate) hot_header_percent: usize,
}

impl Default for MemoryConfig {
    /// 256 MiB, objects up to 32 MiB.
    fn default() -> Self {
        MemoryConfig::new(256 << 20)
    }
}

impl MemoryConfig {
    /// A tier that holds at most `capacity_bytes`, counting bodies, meta and
    /// per-entry overhead, and entries still being written.
    pub fn new(capacity_bytes: usize) -> Self {
        MemoryConfig {
            capacity_bytes,
            max_object_bytes: None,
            shards: None,
            name: "memory".to_string(),
            small_queue_percent: 2,
            hot_header_percent: 1,
        }
    }

    /// Refuse bodies longer than this (default: an eighth of the capacity).
    /// A write that grows past it fails at `write_body` and leaves nothing.
    pub fn max_object_bytes(mut self, bytes: usize) -> Self {
        self.max_object_bytes = Some(bytes);
        self
    }

    /// How many independently locked shards of the key space (default: one
    /// per 16 MiB of capacity, from 1 to 64). Rounded up to a power of two.
    /// Lookups of keys in different shards share no lock; eviction is one
    /// S3-FIFO order over all shards, so the count does not change what is
    /// kept.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// The name in logs, errors and metrics (default `"memory"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The share of the capacity given to S3-FIFO's probationary queue, in
    /// percent (default 2: in the benchmark's policy study it gave the best
    /// byte hit ratio on a mix of sizes and the best hit ratio on the Zipf
    /// and scan traces of 5 and 10, the paper's; see ARCHITECTURE.md).
    pub fn small_queue_percent(mut self, percent: usize) -> Self {
        self.small_queue_percent = percent.clamp(1, 90);
        self
    }

    /// The share of the capacity, in percent, that may hold parsed response
    /// headers of hot entries (default 1; 0 keeps none).
    ///
    /// An entry keeps its meta as one compact buffer, and a hit builds the
    /// response header from it: about 650 CPU instructions per header line.
    /// An entry read three times since it was queued gets a parsed copy,
    /// which its later hits clone instead (about 110 per line). The copies are
    /// charged against the capacity like entries, and go with their entry.
    pub fn hot_header_percent(mut self, percent: usize) -> Self {
        self.hot_header_percent = percent.min(50);
        self
    }

    /// The byte bound.
    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// The per-object body limit in force: the configured one, or an eighth of
    /// the capacity, and never more than the capacity or 3 GiB (an entry's
    /// charge is kept in 32 bits).
    pub fn effective_max_object_bytes(&self) -> usize {
        self.max_object_bytes
            .unwrap_or(self.capacity_bytes / 8)
            .min(self.capacity_bytes)
            .min(MAX_OBJECT_BYTES)
    }

    pub(crate) fn effective_shards(&self) -> usize {
        // Shards only split the lookup lock (eviction is one order over all
        // of them): a small cache sees too few lookups to need many.
        let by_size = (self.capacity_bytes / (16 << 20)).clamp(1, 64);
        self.shards
            .unwrap_or(by_size)
            .clamp(1, 1024)
            .next_power_of_two()
    }
}
