//! In-memory store for standalone mode: keeps the applied offset per partition
//! so fencing and ordering behave as with Redis, but keeps no history (the
//! engine has it).

use std::collections::HashMap;
use std::sync::Mutex;

use super::{PersistBatch, PersistOutcome, Restored, Store, StoreError};
use crate::window::BatchEffect;

/// Fenced offsets only; state lives in the engine and dies with the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    applied: Mutex<HashMap<u32, i64>>,
}

impl Store for MemoryStore {
    async fn persist(&self, batch: &PersistBatch<'_>) -> Result<PersistOutcome, StoreError> {
        let mut applied = self
            .applied
            .lock()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let stored = applied.get(&batch.partition).copied();
        let outcome = match stored {
            Some(offset) if batch.first_offset <= offset => PersistOutcome::Fenced {
                applied_offset: offset,
            },
            _ if stored.unwrap_or(-1) != batch.follows => PersistOutcome::OutOfOrder {
                applied_offset: stored,
            },
            _ => {
                applied.insert(batch.partition, batch.last_offset);
                PersistOutcome::Applied
            }
        };
        Ok(outcome)
    }

    async fn load(&self, partition: u32, _now_ms: i64) -> Result<Restored, StoreError> {
        let applied = self
            .applied
            .lock()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Restored {
            applied_offset: applied.get(&partition).copied(),
            effect: BatchEffect::default(),
        })
    }

    async fn load_token(&self, _: u32, _: &str, _: i64) -> Result<Option<BatchEffect>, StoreError> {
        Ok(None)
    }
}
