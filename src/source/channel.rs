//! In-process record source: the standalone generator feeds each partition
//! through a bounded channel, numbering records like Kafka offsets.

use tokio::sync::mpsc;

use crate::shard::{RecordSource, SourceError, SourceRecord};

/// Receives swap payloads for one partition from an in-process producer.
pub struct ChannelSource {
    rx: mpsc::Receiver<Vec<u8>>,
    next_offset: i64,
}

impl ChannelSource {
    /// A source reading `rx`, numbering from offset 0.
    pub fn new(rx: mpsc::Receiver<Vec<u8>>) -> Self {
        Self { rx, next_offset: 0 }
    }
}

impl RecordSource for ChannelSource {
    async fn next_record(&mut self) -> Result<Option<SourceRecord>, SourceError> {
        Ok(self.rx.recv().await.map(|payload| {
            let offset = self.next_offset;
            self.next_offset += 1;
            SourceRecord {
                offset,
                payload,
                traceparent: None,
            }
        }))
    }

    fn commit(&mut self, _offset: i64) -> Result<(), SourceError> {
        Ok(())
    }

    fn lag(&self) -> Option<i64> {
        Some(self.rx.len() as i64)
    }
}
