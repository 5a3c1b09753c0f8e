//! [`RedisStorage`]: the `Storage` and `Tier` impls.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::{
    HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryId, CacheKey, CacheMeta};
use pingora_error::Result;
use tier_core::error::object_too_large;
use tier_core::key::target_parts;
use tier_core::{BodyHitHandler, Capabilities, Tier, TierReport, TierStats};

use crate::config::RedisConfig;
use crate::format::{
    gen_field, millis, new_generation, parse_gen, ttl_for, unframe_chunk, EntryKeys, Head,
};
use crate::hit::RedisHit;
use crate::miss::RedisMiss;
use crate::remote::Remote;
use crate::scripts::{PURGE, SET_HEAD};

/// A cache tier in Redis (one server or a Cluster), shared by every proxy
/// that points at it.
///
/// Entries never tear: a body is written as checksummed chunks under a new
/// generation, and one script switches the entry to it. Redis bounds the
/// tier (each entry's TTL is its freshness plus stale windows; set
/// `maxmemory` and an eviction policy on the server). A slow or absent Redis
/// is a miss: every call has a timeout, and a circuit breaker stops calling
/// it for a while after repeated failures.
///
/// ```no_run
/// use tier_redis::{RedisConfig, RedisStorage};
///
/// # async fn run() -> pingora_error::Result<()> {
/// let redis: &'static RedisStorage =
///     RedisStorage::new(RedisConfig::single("redis://127.0.0.1:6379")).leak();
/// redis.ping().await?; // optional: fail fast on a wrong address
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisStorage {
    remote: Arc<Remote>,
}

/// The tier's counters, with the breaker's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Hits, misses, inserts, rejections and errors (Redis keeps the
    /// entry and byte counts; this process does not know them).
    pub tier: TierStats,
    /// Calls that took longer than the timeout.
    pub timeouts: u64,
    /// Times the breaker opened.
    pub breaker_trips: u64,
    /// Calls refused because the breaker was open.
    pub breaker_refusals: u64,
    /// Whether the breaker is open now.
    pub breaker_open: bool,
}

impl RedisStorage {
    /// A tier on the Redis `config` names. No connection is made yet: the
    /// first call connects, so a proxy starts (and serves from its other
    /// tiers) while Redis is down. Call [`ping`](Self::ping) to check the
    /// address at start.
    pub fn new(config: RedisConfig) -> Self {
        RedisStorage {
            remote: Arc::new(Remote::new(config)),
        }
    }

    /// Move to the heap for the `'static` lifetime pingora's storages have.
    pub fn leak(self) -> &'static Self {
        Box::leak(Box::new(self))
    }

    /// Connect (if not yet connected) and send `PING`.
    pub async fn ping(&self) -> Result<()> {
        self.remote.ping().await
    }

    /// Follow the invalidations other instances publish (see
    /// [`RedisConfig::broadcast_invalidations`]) and hand each to `apply`,
    /// typically a purge of this proxy's local tiers. Runs until the process
    /// ends, reconnecting when the subscription drops: spawn it, or run it
    /// as a background service.
    pub async fn follow_invalidations<F, Fut>(&'static self, apply: F)
    where
        F: Fn(crate::Invalidated) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let config = &self.remote.config;
        crate::invalidate::follow(
            config.subscribe_urls(),
            config.invalidation_channel(),
            self.remote.instance,
            apply,
        )
        .await;
    }

    /// Tell the fleet `key` was invalidated here. A failure is logged and
    /// counted: the entry is gone from Redis either way.
    async fn broadcast(&self, key: &CompactCacheKey, expire: bool) {
        if !self.remote.config.broadcast_invalidations {
            return;
        }
        let message = crate::invalidate::encode(self.remote.instance, key, expire);
        let channel = self.remote.config.invalidation_channel();
        let sent = self
            .remote
            .call("broadcast invalidation", Some(key), |mut c| async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(message)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await;
        if let Err(e) = sent {
            tracing::warn!(tier = %self.remote.name(), error = %e, "invalidation not broadcast; other proxies may serve their copies until they expire");
        }
    }

    /// The tier's counters and the breaker's state.
    pub fn redis_stats(&self) -> RedisStats {
        let breaker = &self.remote.breaker;
        RedisStats {
            tier: self.remote.counters.snapshot(),
            timeouts: self.remote.timeouts.load(Ordering::Relaxed),
            breaker_trips: breaker.trips.load(Ordering::Relaxed),
            breaker_refusals: breaker.refused.load(Ordering::Relaxed),
            breaker_open: breaker.is_open(),
        }
    }

    fn keys(&self, key: &CompactCacheKey) -> EntryKeys {
        EntryKeys::new(&self.remote.config.prefix, key)
    }

    /// The entry's checked head and inline body, or `None` for a miss. An
    /// entry that fails a check, or lost some of its chunks, is removed and
    /// is a miss.
    async fn fetch_head(
        &self,
        key: &CompactCacheKey,
        keys: &EntryKeys,
    ) -> Result<Option<(Head, Option<bytes::Bytes>)>> {
        // One plain HMGET: a small body comes with its head, in one round
        // trip; a chunked one then checks that its chunks still exist.
        let entry = keys.entry.clone();
        type Fields = (Option<Vec<u8>>, Option<Vec<u8>>, Option<String>);
        let (head, inline, stored_gen): Fields = self
            .remote
            .call("lookup", Some(key), |mut c| async move {
                redis::cmd("HMGET")
                    .arg(entry)
                    .arg("h")
                    .arg("b")
                    .arg("g")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let Some(head) = head else {
            return Ok(None);
        };
        let stored_gen = stored_gen.as_deref().and_then(parse_gen);
        let checked = match Head::decode(&head) {
            Ok(head) if Some(head.gen) != stored_gen => {
                Err("the head names another generation than the entry".to_string())
            }
            Ok(head) => {
                self.check_body(key, keys, head, inline.unwrap_or_default())
                    .await?
            }
            Err(problem) => Err(problem),
        };
        match checked {
            Ok(found) => Ok(Some(found)),
            Err(problem) => {
                self.remote.counters.record_error();
                tracing::warn!(tier = %self.remote.name(), %problem, "dropping a broken Redis entry");
                // Remove the broken generation only: a write that switched
                // in a new one since the HMGET stays.
                let _ = self.remove(key, keys, stored_gen).await;
                Ok(None)
            }
        }
    }

    /// An inline body checked, or a chunked body's chunks all present; the
    /// problem otherwise.
    async fn check_body(
        &self,
        key: &CompactCacheKey,
        keys: &EntryKeys,
        head: Head,
        inline: Vec<u8>,
    ) -> Result<std::result::Result<(Head, Option<bytes::Bytes>), String>> {
        if head.inline {
            let len = head.body_len as usize;
            return Ok(unframe_chunk(inline, head.gen, 0, len).map(|body| (head, Some(body))));
        }
        if head.chunks == 0 {
            // An empty body: nothing to check (the writer stores these inline).
            return Ok(Ok((head, None)));
        }
        let chunk_keys: Vec<String> = (0..head.chunks).map(|i| keys.chunk(head.gen, i)).collect();
        let present = self
            .remote
            .call("lookup chunks", Some(key), |mut c| async move {
                redis::cmd("EXISTS")
                    .arg(chunk_keys)
                    .query_async::<u32>(&mut c)
                    .await
            })
            .await?;
        if present < head.chunks {
            return Ok(Err(format!(
                "{} of {} chunks are gone (evicted or expired)",
                head.chunks - present,
                head.chunks
            )));
        }
        Ok(Ok((head, None)))
    }

    /// Run the purge script; the removed generation, if any.
    async fn remove(
        &self,
        key: &CompactCacheKey,
        keys: &EntryKeys,
        gen: Option<u64>,
    ) -> Result<Option<u64>> {
        let (entry, prefix) = (keys.entry.clone(), keys.chunk_prefix.clone());
        let expected = gen.map(gen_field).unwrap_or_default();
        let removed: Option<String> = self
            .remote
            .call("purge", Some(key), |mut c| async move {
                PURGE
                    .key(entry)
                    .arg(expected)
                    .arg(prefix)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(removed.as_deref().and_then(parse_gen))
    }

    /// Rewrite the meta of the current generation (of `only`, if given) with
    /// `change`; `false` when there is no such entry. Retries when a new write
    /// lands between reading the head and replacing it.
    async fn change_meta(
        &self,
        key: &CompactCacheKey,
        only: Option<u64>,
        change: impl Fn(CacheMeta) -> Result<(CacheMeta, bool)>,
    ) -> Result<bool> {
        let keys = self.keys(key);
        for _ in 0..3 {
            let Some((mut head, _)) = self.fetch_head(key, &keys).await? else {
                return Ok(false);
            };
            if only.is_some_and(|gen| gen != head.gen) {
                return Ok(false);
            }
            let meta = CacheMeta::deserialize(&head.internal, &head.header)?;
            let (meta, new_ttl) = change(meta)?;
            let ttl = if new_ttl {
                millis(ttl_for(
                    &meta,
                    self.remote.config.min_ttl,
                    self.remote.config.max_ttl,
                ))
            } else {
                0
            };
            (head.internal, head.header) = meta.serialize()?;
            let (entry, prefix, gen) = (
                keys.entry.clone(),
                keys.chunk_prefix.clone(),
                gen_field(head.gen),
            );
            let encoded = head.encode();
            let replaced: i64 = self
                .remote
                .call("set meta", Some(key), |mut c| async move {
                    SET_HEAD
                        .key(entry)
                        .arg(gen)
                        .arg(encoded)
                        .arg(ttl)
                        .arg(prefix)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            if replaced == 1 {
                return Ok(true);
            }
            if only.is_some() {
                return Ok(false);
            }
        }
        Ok(false)
    }
}

#[async_trait]
impl Storage for RedisStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let compact = key.to_compact();
        let keys = self.keys(&compact);
        let started = std::time::Instant::now();
        let found = match self.fetch_head(&compact, &keys).await {
            Ok(found) => found,
            Err(e) => {
                // Redis down or slow: a miss, not an outage.
                tracing::debug!(tier = %self.remote.name(), error = %e, "lookup failed; a miss");
                None
            }
        };
        let Some((head, inline)) = found else {
            self.remote.latencies.lookup(false, started.elapsed());
            self.remote.counters.record_miss();
            return Ok(None);
        };
        self.remote.latencies.lookup(true, started.elapsed());
        let meta = match CacheMeta::deserialize(&head.internal, &head.header) {
            Ok(meta) => meta,
            Err(e) => {
                self.remote.counters.record_error();
                tracing::warn!(tier = %self.remote.name(), error = %e, "unreadable meta; a miss");
                let _ = self.remove(&compact, &keys, Some(head.gen)).await;
                self.remote.counters.record_miss();
                return Ok(None);
            }
        };
        self.remote.counters.record_hit();
        let id = Some(CacheEntryId::new(head.gen));
        let hit: HitHandler = match inline {
            Some(body) => {
                let weight = body.len();
                Box::new(
                    BodyHitHandler::new(body)
                        .with_entry_id(id)
                        .with_eviction_weight(weight),
                )
            }
            None => {
                let end = head.body_len as usize;
                Box::new(RedisHit {
                    remote: self.remote.clone(),
                    key: compact,
                    keys,
                    head,
                    pos: 0,
                    end,
                })
            }
        };
        Ok(Some((meta, hit)))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let compact = key.to_compact();
        let config = &self.remote.config;
        if let Some(len) = tier_core::announced_body_len(meta) {
            if len > config.max_object_bytes as u64 {
                self.remote.counters.record_rejection();
                return Err(object_too_large(
                    self.remote.name(),
                    config.max_object_bytes,
                    usize::try_from(len).unwrap_or(usize::MAX),
                ));
            }
        }
        if self.remote.breaker.is_open() {
            return Err(tier_core::error::tier_error(
                tier_core::error::UNAVAILABLE,
                self.remote.name(),
                "write",
                Some(&compact),
                "circuit breaker open after repeated Redis failures",
            ));
        }
        let (internal, header) = meta.serialize()?;
        let keys = self.keys(&compact);
        Ok(Box::new(RedisMiss {
            remote: self.remote.clone(),
            key: compact,
            keys,
            gen: new_generation(),
            ttl_ms: millis(ttl_for(meta, config.min_ttl, config.max_ttl)),
            internal,
            header,
            pending: BytesMut::new(),
            chunks: 0,
            total: 0,
            failed: false,
            published: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let (key, id) = target_parts(target);
        let removed = self.remove(key, &self.keys(key), id).await?;
        // Other proxies may hold local copies even when Redis had none; an
        // eviction is this tier's own business.
        if matches!(purge_type, PurgeType::Invalidation) {
            self.broadcast(key, false).await;
        }
        Ok(match removed {
            Some(gen) => PurgeOutcome::Purged(Some(CacheEntryId::new(gen))),
            None => PurgeOutcome::NotFound,
        })
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let (key, id) = target_parts(target);
        let changed = self
            .change_meta(key, id, |mut meta| {
                meta.expire_at(SystemTime::now());
                Ok((meta, false))
            })
            .await?;
        self.broadcast(key, true).await;
        Ok(if changed {
            PurgeOutcome::Expired
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let (internal, header) = meta.serialize()?;
        self.change_meta(&key.to_compact(), None, |_| {
            Ok((CacheMeta::deserialize(&internal, &header)?, true))
        })
        .await
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[async_trait]
impl Tier for RedisStorage {
    fn tier_name(&self) -> &str {
        self.remote.name()
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::all();
        // Readers cannot follow a write in progress: the body becomes
        // visible, all at once, when its generation is switched in.
        caps.streaming_partial_write = false;
        caps.max_object_bytes = Some(self.remote.config.max_object_bytes);
        caps
    }

    fn stats(&self) -> TierStats {
        self.remote.counters.snapshot()
    }

    /// The common counters (no entry or byte counts: Redis holds those),
    /// timeouts and the breaker, and hit, miss and write latencies.
    fn report(&self) -> TierReport {
        let s = self.redis_stats();
        let r = &self.remote;
        TierReport::new(self.tier_name(), s.tier)
            .counter("timeouts", "Redis calls over the timeout", s.timeouts)
            .counter("breaker_trips", "Times the breaker opened", s.breaker_trips)
            .counter(
                "breaker_refusals",
                "Calls refused while the breaker was open",
                s.breaker_refusals,
            )
            .gauge(
                "breaker_open",
                "1 while the breaker is open",
                u64::from(s.breaker_open),
            )
            .op_latencies(&r.latencies)
    }
}
