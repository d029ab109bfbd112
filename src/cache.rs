//! The embedding cache: robots embed the same commands, labels and prompts again and again; a repeat should cost
//! a hash and a copy, not an inference.
//!
//! It sits at the edge where requests enter the actors (`DaemonHandle::embed`): a request whose inputs are all
//! cached is answered without tokenizing or touching the batcher; the inputs that miss go through the batcher as
//! usual and are stored when computed. Entries hold the model's full pooled vector (before `dimensions` and
//! `normalize`, which are applied after a hit exactly as after a run), its token count and whether it was cut.
//!
//! The key is a SHA-256 digest of the exact model input: the model's name, the prompt, whether over-long inputs
//! may be cut, and the text (a fixed 32 bytes, so a 10 MB text costs no more to cache than a word). The store is
//! quick_cache's concurrent cache, bounded by a byte weight (key, vector and bookkeeping) and scan-resistant
//! (its Clock-PRO / S3-FIFO policy keeps entries that are hit again over a stream of one-off entries: a bulk
//! re-index does not flush the hot commands). The store is split in shards by the key's hash, each with its
//! share of the budget, so evictions can begin a little before the whole budget is used. What this module is not: a cache of replies, or of tokenization.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};
use sha2::{Digest, Sha256};

use crate::protocol::message::{CacheStats, ModelCacheStats};

/// Bytes an entry costs beyond its key and vector (the cache's slot, the Arc, counters): an estimate that keeps
/// the byte budget honest for small vectors.
const ENTRY_OVERHEAD: u64 = 96;

/// The exact model input an entry is for.
pub(crate) type CacheKey = [u8; 32];

/// One cached result: what a run of the model gave for one input.
#[derive(Debug)]
pub(crate) struct Cached {
    /// Which served model computed it (its index, the default model first).
    pub model: usize,
    /// The pooled vector at full dimension, not normalized.
    pub vector: Box<[f32]>,
    /// Tokens after truncation, prompt and special tokens included.
    pub tokens: usize,
    /// Whether the input was cut at the model's max tokens.
    pub truncated: bool,
}

/// The cache and its counters. `max_bytes == 0` turns it off (every lookup misses, nothing is stored).
pub(crate) struct EmbedCache {
    store: Option<Cache<CacheKey, Arc<Cached>, ByteWeighter, DefaultHashBuilder, Evictions>>,
    max_bytes: u64,
    /// The served models' names, by index.
    models: Vec<String>,
    /// Per model: hits, misses and evictions.
    counters: Arc<Vec<[AtomicU64; 3]>>,
}

impl std::fmt::Debug for EmbedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedCache").field("max_bytes", &self.max_bytes).finish()
    }
}

#[derive(Clone)]
struct ByteWeighter;

/// Counts entries evicted to make room, per model.
#[derive(Clone)]
struct Evictions(Arc<Vec<[AtomicU64; 3]>>);

const HITS: usize = 0;
const MISSES: usize = 1;
const EVICTIONS: usize = 2;

// === impl EmbedCache ===

impl EmbedCache {
    /// A cache of at most `max_bytes` (0: off) shared by the named models, sized for vectors of about `dim`
    /// floats.
    pub fn new(max_bytes: u64, dim: usize, models: Vec<String>) -> EmbedCache {
        let counters: Arc<Vec<[AtomicU64; 3]>> = Arc::new(models.iter().map(|_| Default::default()).collect());
        let entry_bytes = 32 + ENTRY_OVERHEAD + 4 * dim as u64;
        let store = (max_bytes > 0).then(|| {
            let estimated_items = usize::try_from((max_bytes / entry_bytes).max(16)).unwrap_or(usize::MAX);
            Cache::with(
                estimated_items,
                max_bytes,
                ByteWeighter,
                DefaultHashBuilder::default(),
                Evictions(counters.clone()),
            )
        });
        EmbedCache {
            store,
            max_bytes,
            models,
            counters,
        }
    }

    /// Whether it stores anything at all.
    pub fn enabled(&self) -> bool {
        self.store.is_some()
    }

    /// The key of one exact model input.
    pub fn key(model: &str, prompt: Option<&str>, truncate: bool, text: &str) -> CacheKey {
        let mut hasher = Sha256::new();
        for part in [model, prompt.unwrap_or("")] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.update([u8::from(prompt.is_some()), u8::from(truncate)]);
        hasher.update(text.as_bytes());
        hasher.finalize().into()
    }

    /// Looks `key` up for model `model` (its index), counting a hit or a miss.
    pub fn get(&self, model: usize, key: &CacheKey) -> Option<Arc<Cached>> {
        let found = self.store.as_ref().and_then(|store| store.get(key));
        let counter = if found.is_some() { HITS } else { MISSES };
        self.counters[model][counter].fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores a computed result.
    pub fn insert(&self, key: CacheKey, cached: Cached) {
        if let Some(store) = &self.store {
            store.insert(key, Arc::new(cached));
        }
    }

    /// The figures `status.cache` reports: totals, and per model (its entries and bytes counted by walking the
    /// store: `status` is rare, and the walk takes about a millisecond per 10,000 entries).
    pub fn stats(&self) -> CacheStats {
        let mut per_model: Vec<ModelCacheStats> = self
            .counters
            .iter()
            .map(|c| ModelCacheStats {
                hits: c[HITS].load(Ordering::Relaxed),
                misses: c[MISSES].load(Ordering::Relaxed),
                evictions: c[EVICTIONS].load(Ordering::Relaxed),
                ..ModelCacheStats::default()
            })
            .collect();
        if let Some(store) = &self.store {
            for (key, value) in store.iter() {
                if let Some(stats) = per_model.get_mut(value.model) {
                    stats.entries += 1;
                    stats.bytes += ByteWeighter.weight(&key, &value);
                }
            }
        }
        let sum = |f: fn(&ModelCacheStats) -> u64| per_model.iter().map(f).sum::<u64>();
        CacheStats {
            enabled: self.enabled(),
            max_bytes: self.max_bytes,
            bytes: self.store.as_ref().map_or(0, |s| s.weight()),
            entries: self.store.as_ref().map_or(0, |s| s.len() as u64),
            hits: sum(|m| m.hits),
            misses: sum(|m| m.misses),
            evictions: sum(|m| m.evictions),
            per_model: self.models.iter().cloned().zip(per_model).collect(),
        }
    }
}

impl Weighter<CacheKey, Arc<Cached>> for ByteWeighter {
    fn weight(&self, key: &CacheKey, value: &Arc<Cached>) -> u64 {
        key.len() as u64 + ENTRY_OVERHEAD + 4 * value.vector.len() as u64
    }
}

impl Lifecycle<CacheKey, Arc<Cached>> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut Self::RequestState, _key: CacheKey, value: Arc<Cached>) {
        if let Some(counters) = self.0.get(value.model) {
            counters[EVICTIONS].fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(dim: usize, seed: f32) -> Cached {
        Cached {
            model: 0,
            vector: vec![seed; dim].into_boxed_slice(),
            tokens: 3,
            truncated: false,
        }
    }

    #[test]
    fn keys_cover_the_exact_model_input() {
        let base = EmbedCache::key("m", None, true, "text");
        assert_eq!(base, EmbedCache::key("m", None, true, "text"));
        for other in [
            EmbedCache::key("n", None, true, "text"),
            EmbedCache::key("m", Some(""), true, "text"),
            EmbedCache::key("m", Some("q: "), true, "text"),
            EmbedCache::key("m", None, false, "text"),
            EmbedCache::key("m", None, true, "text "),
            // The prompt's end and the text's start cannot be confused.
            EmbedCache::key("m", Some("q: t"), true, "ext"),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn the_byte_budget_holds_and_evictions_are_counted() {
        let dim = 384;
        let entry = 32 + ENTRY_OVERHEAD + 4 * dim as u64;
        let cache = EmbedCache::new(100 * entry, dim, vec!["m".into()]);
        for i in 0..1000u32 {
            cache.insert(EmbedCache::key("m", None, true, &i.to_string()), cached(dim, i as f32));
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 100 * entry, "{} bytes over the budget", stats.bytes);
        assert!(stats.entries > 50 && stats.entries <= 100, "{} entries", stats.entries);
        assert_eq!(stats.evictions, 1000 - stats.entries);
        assert_eq!(stats.per_model["m"].entries, stats.entries);
        assert_eq!(stats.per_model["m"].bytes, stats.bytes);
    }

    #[test]
    fn models_share_the_budget_and_are_counted_apart() {
        let entry = |dim: u64| 32 + ENTRY_OVERHEAD + 4 * dim;
        // The store is sharded by the key's hash (a random seed), each shard with its part of the budget, and a
        // shard holds at least 32 estimated entries: 5 + 5 entries fit in any one shard however they fall, so
        // nothing is evicted on any machine (20 + 20 in 4 shards overflowed one now and then).
        let cache = EmbedCache::new(50 * entry(1024), 384, vec!["small".into(), "big".into()]);
        for i in 0..5u32 {
            let key = EmbedCache::key("small", None, true, &i.to_string());
            cache.insert(
                key,
                Cached {
                    model: 0,
                    ..cached(384, 1.0)
                },
            );
            let key = EmbedCache::key("big", None, true, &i.to_string());
            cache.insert(
                key,
                Cached {
                    model: 1,
                    ..cached(1024, 1.0)
                },
            );
        }
        assert!(cache
            .get(0, &EmbedCache::key("small", None, true, "3"))
            .is_some_and(|c| c.vector.len() == 384));
        assert!(cache
            .get(1, &EmbedCache::key("big", None, true, "3"))
            .is_some_and(|c| c.vector.len() == 1024));
        let stats = cache.stats();
        let (small, big) = (stats.per_model["small"], stats.per_model["big"]);
        assert_eq!((small.entries, big.entries, small.hits, big.hits), (5, 5, 1, 1));
        assert_eq!((small.bytes, big.bytes), (5 * entry(384), 5 * entry(1024)));
        assert_eq!(stats.bytes, small.bytes + big.bytes);
    }

    #[test]
    fn a_scan_does_not_flush_the_hot_entries() {
        let dim = 64;
        let entry = 32 + ENTRY_OVERHEAD + 4 * dim as u64;
        let cache = EmbedCache::new(200 * entry, dim, vec!["m".into()]);
        let hot: Vec<CacheKey> = (0..50).map(|i| EmbedCache::key("m", None, true, &format!("hot {i}"))).collect();
        for key in &hot {
            cache.insert(*key, cached(dim, 1.0));
        }
        // The hot set is used again and again...
        for _ in 0..3 {
            for key in &hot {
                assert!(cache.get(0, key).is_some());
            }
        }
        // ... then a bulk re-index streams 20 times the cache's size of one-off texts through it.
        for i in 0..4000 {
            let key = EmbedCache::key("m", None, true, &format!("bulk {i}"));
            if cache.get(0, &key).is_none() {
                cache.insert(key, cached(dim, 2.0));
            }
        }
        let kept = hot.iter().filter(|key| cache.get(0, key).is_some()).count();
        assert!(kept >= 45, "only {kept} of 50 hot entries survived the scan");
    }

    #[test]
    fn off_means_nothing_stored_and_every_lookup_a_miss() {
        let cache = EmbedCache::new(0, 384, vec!["m".into()]);
        let key = EmbedCache::key("m", None, true, "x");
        cache.insert(key, cached(384, 1.0));
        assert!(cache.get(0, &key).is_none());
        let stats = cache.stats();
        assert_eq!((stats.enabled, stats.entries, stats.misses), (false, 0, 1));
    }
}
