//! Invalidations shared across the fleet: a purge or expiry through one proxy
//! is published on a Redis channel, and every other proxy following it
//! removes (or expires) the key in its own local tiers, which would otherwise
//! keep serving their copies.
//!
//! The message: `TIERSINV`, version (u8), kind (u8: 0 purge, 1 expire), the
//! sender's instance id (u64), the key's primary hash (16 bytes), a variance
//! flag (u8) and hash (16 bytes), then the user tag (UTF-8).

use std::time::Duration;

use futures::StreamExt;
use pingora_cache::key::CompactCacheKey;

const MAGIC: &[u8; 8] = b"TIERSINV";
const VERSION: u8 = 1;
const FIXED: usize = 8 + 1 + 1 + 8 + 16 + 1 + 16;

/// What another instance invalidated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidated {
    /// The key, as pingora's eviction manager and the tiers know it.
    pub key: CompactCacheKey,
    /// `true` for an expiry (keep the body, mark it stale), `false` for a
    /// purge (remove it).
    pub expire: bool,
}

pub(crate) fn encode(sender: u64, key: &CompactCacheKey, expire: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED + key.user_tag.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(u8::from(expire));
    out.extend_from_slice(&sender.to_le_bytes());
    out.extend_from_slice(&key.primary);
    match &key.variance {
        Some(variance) => {
            out.push(1);
            out.extend_from_slice(&variance[..]);
        }
        None => {
            out.push(0);
            out.extend_from_slice(&[0; 16]);
        }
    }
    out.extend_from_slice(key.user_tag.as_bytes());
    out
}

/// The sender and what it invalidated; `None` for anything malformed.
pub(crate) fn decode(bytes: &[u8]) -> Option<(u64, Invalidated)> {
    if bytes.len() < FIXED || &bytes[..8] != MAGIC || bytes[8] != VERSION || bytes[9] > 1 {
        return None;
    }
    let mut sender = [0u8; 8];
    sender.copy_from_slice(&bytes[10..18]);
    let mut primary = [0u8; 16];
    primary.copy_from_slice(&bytes[18..34]);
    let variance = match bytes[34] {
        0 => None,
        1 => {
            let mut v = [0u8; 16];
            v.copy_from_slice(&bytes[35..51]);
            Some(Box::new(v))
        }
        _ => return None,
    };
    let user_tag = std::str::from_utf8(&bytes[FIXED..]).ok()?;
    Some((
        u64::from_le_bytes(sender),
        Invalidated {
            key: CompactCacheKey {
                primary,
                variance,
                user_tag: user_tag.into(),
            },
            expire: bytes[9] == 1,
        },
    ))
}

/// Subscribe to `channel` on the first of `urls` that answers and hand every
/// message from another instance to `on_message`; reconnect after a pause
/// when the connection drops. Runs until the process ends.
pub(crate) async fn follow<F, Fut>(urls: Vec<String>, channel: String, me: u64, on_message: F)
where
    F: Fn(Invalidated) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        for url in &urls {
            let pubsub = async {
                let client = redis::Client::open(url.as_str())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                redis::RedisResult::Ok(pubsub)
            };
            let Ok(mut pubsub) = pubsub.await else {
                continue;
            };
            tracing::info!(%channel, "following invalidations");
            pause = Duration::from_millis(100);
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                match decode(message.get_payload_bytes()) {
                    Some((sender, _)) if sender == me => {}
                    Some((_, invalidated)) => on_message(invalidated).await,
                    None => tracing::warn!(%channel, "ignoring a malformed invalidation"),
                }
            }
            tracing::warn!(%channel, "invalidation subscription dropped; reconnecting");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip_with_and_without_variance() {
        let plain = pingora_cache::CacheKey::new("/a", "tag").to_compact();
        let mut varied = plain.clone();
        varied.variance = Some(Box::new([7; 16]));
        for (key, expire) in [(plain, false), (varied, true)] {
            let bytes = encode(42, &key, expire);
            assert_eq!(decode(&bytes), Some((42, Invalidated { key, expire })));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = decode(&bytes);
        }
    }
}
