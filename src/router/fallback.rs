//! Answers from the store when a shard cannot: the token's persisted buckets
//! (`Store::load_token`, a read-only script on a replica for Redis) restored into
//! a fresh [`WindowEngine`] with the shards' configuration, then queried at the
//! request time, so the numbers equal what the shard would have answered for
//! everything it had persisted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::store::{Store, StoreError};
use crate::window::{EngineConfig, TokenStats, WindowEngine};

/// A boxed future, so the router can hold any store behind one object type.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The token whose lookup serves as the store reachability probe.
pub const PROBE_TOKEN: &str = "__swapstats_router_probe__";

/// Why the fallback could not answer.
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The restore task did not finish (the runtime is shutting down).
    #[error("restore: {0}")]
    Restore(#[from] tokio::task::JoinError),
}

/// A second source of a token's stats, used when its shard is down.
pub trait StatsFallback: Send + Sync + 'static {
    /// `token`'s stats at `now_ms` from persisted data; `None` when nothing is persisted.
    fn stats<'a>(
        &'a self,
        partition: u32,
        token: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<TokenStats>, FallbackError>>;

    /// Succeeds when the backing store answers (for the router's `/readyz`).
    fn ping(&self) -> BoxFuture<'_, Result<(), FallbackError>>;
}

/// [`StatsFallback`] over any [`Store`].
pub struct StoreFallback<S: Store> {
    store: Arc<S>,
    engine: EngineConfig,
}

impl<S: Store> StoreFallback<S> {
    /// `engine` must be the shards' configuration (same windows and retention).
    pub fn new(store: Arc<S>, engine: EngineConfig) -> Self {
        Self { store, engine }
    }
}

impl<S: Store> StatsFallback for StoreFallback<S> {
    fn stats<'a>(
        &'a self,
        partition: u32,
        token: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<TokenStats>, FallbackError>> {
        Box::pin(async move {
            let Some(effect) = self.store.load_token(partition, token, now_ms).await? else {
                return Ok(None);
            };
            // A busy token's day is up to hundreds of thousands of marks:
            // restored on the blocking pool, not on a worker other requests
            // are queued on.
            let (config, token) = (self.engine.clone(), token.to_owned());
            let restored = tokio::task::spawn_blocking(move || {
                let mut engine = WindowEngine::new(config);
                engine.restore(&effect);
                engine.stats(&token, now_ms)
            });
            Ok(restored.await?)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), FallbackError>> {
        Box::pin(async move {
            self.store
                .load_token(0, PROBE_TOKEN, crate::now_ms())
                .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::window::WindowSpec;

    fn config() -> EngineConfig {
        EngineConfig {
            windows: WindowSpec::defaults(),
            dedup_horizon_ms: 1000,
            retention_ms: 1000,
        }
    }

    #[tokio::test]
    async fn nothing_persisted_is_none_and_ping_works() {
        let fallback = StoreFallback::new(Arc::new(MemoryStore::default()), config());
        assert!(fallback.stats(0, "BTC", 0).await.unwrap().is_none());
        fallback.ping().await.unwrap();
    }
}
