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
//! re-index does not flush the hot commands). What this module is not: a cache of replies, or of tokenization.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};
use sha2::{Digest, Sha256};

use crate::protocol::message::CacheStats;

/// Bytes an entry costs beyond its key and vector (the cache's slot, the Arc, counters): an estimate that keeps
/// the byte budget honest for small vectors.
const ENTRY_OVERHEAD: u64 = 96;

/// The exact model input an entry is for.
pub(crate) type CacheKey = [u8; 32];

/// One cached result: what a run of the model gave for one input.
#[derive(Debug)]
pub(crate) struct Cached {
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
    evictions: Arc<AtomicU64>,
    /// Hits and misses per model name.
    counters: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl std::fmt::Debug for EmbedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedCache").field("max_bytes", &self.max_bytes).finish()
    }
}

#[derive(Clone)]
struct ByteWeighter;

/// Counts entries evicted to make room.
#[derive(Clone)]
struct Evictions(Arc<AtomicU64>);

// === impl EmbedCache ===

impl EmbedCache {
    /// A cache of at most `max_bytes` (0: off), sized for vectors of about `dim` floats.
    pub fn new(max_bytes: u64, dim: usize) -> EmbedCache {
        let evictions = Arc::new(AtomicU64::new(0));
        let entry_bytes = 32 + ENTRY_OVERHEAD + 4 * dim as u64;
        let store = (max_bytes > 0).then(|| {
            let estimated_items = usize::try_from((max_bytes / entry_bytes).max(16)).unwrap_or(usize::MAX);
            Cache::with(
                estimated_items,
                max_bytes,
                ByteWeighter,
                DefaultHashBuilder::default(),
                Evictions(evictions.clone()),
            )
        });
        EmbedCache {
            store,
            max_bytes,
            evictions,
            counters: Mutex::new(BTreeMap::new()),
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

    /// Looks `key` up for `model`, counting a hit or a miss.
    pub fn get(&self, model: &str, key: &CacheKey) -> Option<Arc<Cached>> {
        let found = self.store.as_ref().and_then(|store| store.get(key));
        let mut counters = crate::actors::state::lock(&self.counters);
        let entry = counters.entry(model.to_owned()).or_default();
        if found.is_some() {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        found
    }

    /// Stores a computed result.
    pub fn insert(&self, key: CacheKey, cached: Cached) {
        if let Some(store) = &self.store {
            store.insert(key, Arc::new(cached));
        }
    }

    /// The figures `status.cache` reports: totals, and hits and misses per model.
    pub fn stats(&self) -> CacheStats {
        let counters = crate::actors::state::lock(&self.counters).clone();
        let (hits, misses) = counters.values().fold((0, 0), |(h, m), (hits, misses)| (h + hits, m + misses));
        CacheStats {
            enabled: self.enabled(),
            max_bytes: self.max_bytes,
            bytes: self.store.as_ref().map_or(0, |s| s.weight()),
            entries: self.store.as_ref().map_or(0, |s| s.len() as u64),
            hits,
            misses,
            evictions: self.evictions.load(Ordering::Relaxed),
            per_model: counters
                .into_iter()
                .map(|(model, (hits, misses))| (model, crate::protocol::message::ModelCacheStats { hits, misses }))
                .collect(),
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

    fn on_evict(&self, _state: &mut Self::RequestState, _key: CacheKey, _value: Arc<Cached>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(dim: usize, seed: f32) -> Cached {
        Cached {
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
        let cache = EmbedCache::new(100 * entry, dim);
        for i in 0..1000u32 {
            cache.insert(EmbedCache::key("m", None, true, &i.to_string()), cached(dim, i as f32));
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 100 * entry, "{} bytes over the budget", stats.bytes);
        assert!(stats.entries > 50 && stats.entries <= 100, "{} entries", stats.entries);
        assert_eq!(stats.evictions, 1000 - stats.entries);
    }

    #[test]
    fn a_scan_does_not_flush_the_hot_entries() {
        let dim = 64;
        let entry = 32 + ENTRY_OVERHEAD + 4 * dim as u64;
        let cache = EmbedCache::new(200 * entry, dim);
        let hot: Vec<CacheKey> = (0..50).map(|i| EmbedCache::key("m", None, true, &format!("hot {i}"))).collect();
        for key in &hot {
            cache.insert(*key, cached(dim, 1.0));
        }
        // The hot set is used again and again...
        for _ in 0..3 {
            for key in &hot {
                assert!(cache.get("m", key).is_some());
            }
        }
        // ... then a bulk re-index streams 20 times the cache's size of one-off texts through it.
        for i in 0..4000 {
            let key = EmbedCache::key("m", None, true, &format!("bulk {i}"));
            if cache.get("m", &key).is_none() {
                cache.insert(key, cached(dim, 2.0));
            }
        }
        let kept = hot.iter().filter(|key| cache.get("m", key).is_some()).count();
        assert!(kept >= 45, "only {kept} of 50 hot entries survived the scan");
    }

    #[test]
    fn off_means_nothing_stored_and_every_lookup_a_miss() {
        let cache = EmbedCache::new(0, 384);
        let key = EmbedCache::key("m", None, true, "x");
        cache.insert(key, cached(384, 1.0));
        assert!(cache.get("m", &key).is_none());
        let stats = cache.stats();
        assert_eq!((stats.enabled, stats.entries, stats.misses), (false, 0, 1));
    }
}
