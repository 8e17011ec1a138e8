//! One partition's fetch queue, split off its consumer and read in batches.
//!
//! `StreamConsumer::recv` pays per message for a waker-slot register and
//! unregister, a queue poll that reads the clock more than once, and an `Arc`.
//! librdkafka's batch consume (`rd_kafka_consume_batch_queue`) takes every
//! waiting message under one poll. rdkafka has no safe wrapper for it, so this
//! file is the crate's one FFI boundary: each `unsafe` block says what it
//! relies on, and nothing unsafe leaves [`PartitionQueue`].

use std::collections::VecDeque;
use std::ffi::{c_void, CStr, CString};
use std::future::Future;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::Notify;

use super::kafka::TRACEPARENT_HEADER_C;
use crate::shard::SourceRecord;

/// The queue could not be split off the consumer.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("topic name {0:?} contains a NUL byte")]
    TopicName(String),
    #[error("librdkafka has no queue for {topic}/{partition}")]
    NoQueue { topic: String, partition: i32 },
}

/// One partition's messages, read in batches off the consumer's own queue.
///
/// Split before the partition is assigned, so that no message of it lands in
/// the consumer's queue first. Errors, logs and commit results stay on the
/// consumer's queue, which its owner keeps serving (`StreamConsumer::recv`).
pub struct PartitionQueue {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// Woken by librdkafka (from its own thread) when a message lands on the
    /// empty queue; a wake-up before anyone waits is kept as a permit.
    nonempty: Arc<Notify>,
    /// The queue holds a reference into this client: it must outlive the queue.
    _consumer: Arc<StreamConsumer>,
    /// Reused array the batch consume fills.
    slots: Vec<*mut rdsys::rd_kafka_message_t>,
}

// SAFETY: librdkafka queue handles may be used from any thread (its calls lock
// the queue); the message pointers in `slots` are only live within one
// `read_waiting` call.
unsafe impl Send for PartitionQueue {}

/// Called by librdkafka when a message is enqueued on the empty queue.
unsafe extern "C" fn wake_reader(_client: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Notify` inside the `Arc` the queue holds; the
    // callback is disabled in `Drop` before that `Arc` is released.
    let nonempty = unsafe { &*(opaque as *const Notify) };
    nonempty.notify_one();
}

impl PartitionQueue {
    /// Splits `topic`/`partition` off `consumer`'s queue; reads take at most
    /// `batch` messages at a time.
    pub fn split(
        consumer: &Arc<StreamConsumer>,
        topic: &str,
        partition: i32,
        batch: usize,
    ) -> Result<Self, SplitError> {
        let name = CString::new(topic).map_err(|_| SplitError::TopicName(topic.to_string()))?;
        // SAFETY: the client pointer is live (we hold the consumer) and `name`
        // is a valid C string for the call's duration.
        let raw = unsafe {
            rdsys::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                name.as_ptr(),
                partition,
            )
        };
        let queue = NonNull::new(raw).ok_or_else(|| SplitError::NoQueue {
            topic: topic.to_string(),
            partition,
        })?;
        let nonempty = Arc::new(Notify::new());
        // SAFETY: `queue` is a live handle we own. Forwarding to null stops the
        // partition's messages going to the consumer's queue; the callback's
        // opaque pointer stays valid until `Drop` disables it.
        unsafe {
            rdsys::rd_kafka_queue_forward(queue.as_ptr(), ptr::null_mut());
            rdsys::rd_kafka_queue_cb_event_enable(
                queue.as_ptr(),
                Some(wake_reader),
                Arc::as_ptr(&nonempty) as *mut c_void,
            );
        }
        Ok(Self {
            queue,
            nonempty,
            _consumer: consumer.clone(),
            slots: vec![ptr::null_mut(); batch.max(1)],
        })
    }

    /// Moves the messages waiting now (at most one batch) to `out`, without
    /// blocking. Returns how many events it took off the queue: 0 means the
    /// queue was empty ([`readable`](Self::readable) then waits). `traceparent`
    /// says whether to look for that header (librdkafka parses a message's
    /// headers on first look, even to find there are none). Error events (e.g.
    /// a fetch error) are logged and skipped: librdkafka retries by itself.
    pub fn read_waiting(&mut self, out: &mut VecDeque<SourceRecord>, traceparent: bool) -> usize {
        // SAFETY: `slots` has room for `slots.len()` pointers; librdkafka fills
        // the first `n` with messages we now own.
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                0,
                self.slots.as_mut_ptr(),
                self.slots.len(),
            )
        };
        let n = usize::try_from(n).unwrap_or(0).min(self.slots.len());
        for &message in &self.slots[..n] {
            // SAFETY: each of the first `n` slots is a live message we own;
            // it is read here and destroyed once, right after.
            unsafe {
                if let Some(m) = message.as_ref() {
                    match read_message(m, traceparent) {
                        Ok(read) => out.push_back(read),
                        Err(error) => {
                            tracing::warn!(%error, "kafka fetch error; librdkafka retries")
                        }
                    }
                }
                rdsys::rd_kafka_message_destroy(message);
            }
        }
        n
    }

    /// Waits until a message may have landed on the queue since the last read
    /// found it empty (spurious wake-ups are possible; read again).
    /// (The future holds its own handle, so it does not borrow the queue.)
    pub fn readable(&self) -> impl Future<Output = ()> + Send + 'static {
        let nonempty = self.nonempty.clone();
        async move { nonempty.notified().await }
    }
}

/// Copies one message out of librdkafka, or its error text.
///
/// # Safety
/// `m` must be a live message returned by a consume call.
unsafe fn read_message(
    m: &rdsys::rd_kafka_message_t,
    traceparent: bool,
) -> Result<SourceRecord, String> {
    if m.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: librdkafka returns a static or message-owned C string.
        let text = unsafe { CStr::from_ptr(rdsys::rd_kafka_message_errstr(m)) };
        return Err(text.to_string_lossy().into_owned());
    }
    let payload = if m.payload.is_null() {
        Vec::new()
    } else {
        // SAFETY: a message's payload is `len` bytes owned by the message.
        unsafe { std::slice::from_raw_parts(m.payload as *const u8, m.len) }.to_vec()
    };
    Ok(SourceRecord {
        offset: m.offset,
        payload,
        traceparent: if traceparent {
            // SAFETY: `m` is live, as the caller guarantees.
            unsafe { traceparent_header(m) }
        } else {
            None
        },
    })
}

/// The message's `traceparent` header, if it has one that is UTF-8.
///
/// # Safety
/// `m` must be a live message returned by a consume call.
unsafe fn traceparent_header(m: &rdsys::rd_kafka_message_t) -> Option<String> {
    let mut headers: *mut rdsys::rd_kafka_headers_t = ptr::null_mut();
    let (mut value, mut size): (*const c_void, usize) = (ptr::null(), 0);
    let found = unsafe {
        // SAFETY: the headers belong to the live message; the value pointer
        // stays valid while the message does, and is copied before returning.
        rdsys::rd_kafka_message_headers(m, &mut headers)
            == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            && rdsys::rd_kafka_header_get_last(
                headers,
                TRACEPARENT_HEADER_C.as_ptr(),
                &mut value,
                &mut size,
            ) == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    };
    if !found || value.is_null() {
        return None;
    }
    // SAFETY: librdkafka reports `size` bytes at `value`.
    let bytes = unsafe { std::slice::from_raw_parts(value as *const u8, size) };
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

impl Drop for PartitionQueue {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and released once. The callback is
        // disabled under the queue's lock, which librdkafka holds while it
        // calls it: once this returns, no call is running or to come, so the
        // `Notify` may be freed. The consumer (a field dropped after this)
        // outlives the handle.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}
