//! `Hub`: which client wants which token, and fan-out of messages to clients
//! through bounded queues. A client whose queue is full is dropped with a reason;
//! publishing never waits, so a slow client cannot slow the pipeline or others.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, oneshot};

/// Identifies one connected client.
pub type ClientId = u64;

/// A token gained its first subscriber or lost its last one (the router uses
/// this to keep exactly one upstream subscription per wanted token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterestChange {
    Wanted(String),
    Unwanted(String),
}

/// Why `subscribe` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("at most {0} subscriptions per connection")]
    TooMany(usize),
    #[error("unknown client")]
    UnknownClient,
}

/// What a registered client reads from.
pub struct ClientChannels {
    pub id: ClientId,
    /// Messages to write to the socket, in order.
    pub queue: mpsc::Receiver<Utf8Bytes>,
    /// Fires with a reason when the hub drops the client.
    pub kicked: oneshot::Receiver<String>,
}

struct Client {
    queue: mpsc::Sender<Utf8Bytes>,
    tokens: HashSet<String>,
    kick: Option<oneshot::Sender<String>>,
}

#[derive(Default)]
struct HubState {
    next_id: ClientId,
    clients: HashMap<ClientId, Client>,
    subscribers: HashMap<String, HashSet<ClientId>>,
}

/// Subscriptions and fan-out; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    state: Arc<Mutex<HubState>>,
    max_subscriptions: usize,
    client_queue: usize,
    interest: Option<mpsc::UnboundedSender<InterestChange>>,
    dropped_slow: Arc<std::sync::atomic::AtomicU64>,
    sent: Arc<std::sync::atomic::AtomicU64>,
}

impl Hub {
    /// A hub with per-client limits.
    pub fn new(max_subscriptions: usize, client_queue: usize) -> Self {
        Self {
            state: Arc::default(),
            max_subscriptions,
            client_queue: client_queue.max(1),
            interest: None,
            dropped_slow: Arc::default(),
            sent: Arc::default(),
        }
    }

    /// Reports first-subscriber / last-unsubscriber changes on the returned channel.
    pub fn with_interest_feed(mut self) -> (Self, mpsc::UnboundedReceiver<InterestChange>) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.interest = Some(tx);
        (self, rx)
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new client.
    pub fn register(&self) -> ClientChannels {
        let (tx, rx) = mpsc::channel(self.client_queue);
        let (kick_tx, kick_rx) = oneshot::channel();
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.clients.insert(
            id,
            Client {
                queue: tx,
                tokens: HashSet::new(),
                kick: Some(kick_tx),
            },
        );
        ClientChannels {
            id,
            queue: rx,
            kicked: kick_rx,
        }
    }

    /// Removes a client and all its subscriptions.
    pub fn unregister(&self, id: ClientId) {
        let mut state = self.lock();
        if let Some(client) = state.clients.remove(&id) {
            for token in client.tokens {
                self.remove_subscriber(&mut state, &token, id);
            }
        }
    }

    /// Subscribes a client; returns the tokens that are new for it.
    pub fn subscribe(
        &self,
        id: ClientId,
        tokens: &[String],
    ) -> Result<Vec<String>, SubscribeError> {
        let mut state = self.lock();
        let client = state
            .clients
            .get(&id)
            .ok_or(SubscribeError::UnknownClient)?;
        let fresh: Vec<String> = tokens
            .iter()
            .filter(|t| !client.tokens.contains(*t))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if client.tokens.len() + fresh.len() > self.max_subscriptions {
            return Err(SubscribeError::TooMany(self.max_subscriptions));
        }
        for token in &fresh {
            if let Some(client) = state.clients.get_mut(&id) {
                client.tokens.insert(token.clone());
            }
            let subs = state.subscribers.entry(token.clone()).or_default();
            subs.insert(id);
            if subs.len() == 1 {
                self.announce(InterestChange::Wanted(token.clone()));
            }
        }
        Ok(fresh)
    }

    /// Unsubscribes a client from tokens; returns those it had.
    pub fn unsubscribe(&self, id: ClientId, tokens: &[String]) -> Vec<String> {
        let mut state = self.lock();
        let mut removed = Vec::new();
        for token in tokens {
            let had = state
                .clients
                .get_mut(&id)
                .is_some_and(|c| c.tokens.remove(token));
            if had {
                self.remove_subscriber(&mut state, token, id);
                removed.push(token.clone());
            }
        }
        removed
    }

    fn remove_subscriber(&self, state: &mut HubState, token: &str, id: ClientId) {
        if let Some(subs) = state.subscribers.get_mut(token) {
            subs.remove(&id);
            if subs.is_empty() {
                state.subscribers.remove(token);
                self.announce(InterestChange::Unwanted(token.to_string()));
            }
        }
    }

    fn announce(&self, change: InterestChange) {
        if let Some(tx) = &self.interest {
            let _ = tx.send(change);
        }
    }

    /// True when any client wants `token`.
    pub fn is_wanted(&self, token: &str) -> bool {
        self.lock().subscribers.contains_key(token)
    }

    /// All tokens with at least one subscriber.
    pub fn wanted_tokens(&self) -> Vec<String> {
        self.lock().subscribers.keys().cloned().collect()
    }

    /// Sends `text` to every subscriber of `token`; returns how many got it.
    pub fn publish(&self, token: &str, text: Utf8Bytes) -> usize {
        let mut state = self.lock();
        let Some(subs) = state.subscribers.get(token) else {
            return 0;
        };
        let ids: Vec<ClientId> = subs.iter().copied().collect();
        let mut delivered = 0;
        for id in ids {
            if self.offer(&mut state, id, text.clone()) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Sends `text` to one client (snapshots, acks, errors).
    pub fn send_to(&self, id: ClientId, text: Utf8Bytes) -> bool {
        let mut state = self.lock();
        self.offer(&mut state, id, text)
    }

    /// Queues a message or, if the client's queue is full, drops the client.
    fn offer(&self, state: &mut HubState, id: ClientId, text: Utf8Bytes) -> bool {
        let Some(client) = state.clients.get_mut(&id) else {
            return false;
        };
        match client.queue.try_send(text) {
            Ok(()) => {
                self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(kick) = client.kick.take() {
                    let _ = kick.send(format!(
                        "client too slow: more than {} messages queued",
                        self.client_queue
                    ));
                    self.dropped_slow
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let tokens: Vec<String> = client.tokens.drain().collect();
                for token in tokens {
                    self.remove_subscriber(state, &token, id);
                }
                false
            }
        }
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.lock().clients.len()
    }

    /// Total subscriptions over all clients.
    pub fn subscription_count(&self) -> usize {
        self.lock().clients.values().map(|c| c.tokens.len()).sum()
    }

    /// Messages queued to clients, since start.
    pub fn messages_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Clients dropped for being too slow, since start.
    pub fn dropped_slow(&self) -> u64 {
        self.dropped_slow.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_refcount_limits_and_slow_clients() {
        let (hub, mut interest) = Hub::new(2, 2).with_interest_feed();
        let mut a = hub.register();
        let mut b = hub.register();
        assert_eq!(
            hub.subscribe(a.id, &["BTC".into()]).unwrap(),
            vec!["BTC".to_string()]
        );
        assert_eq!(hub.subscribe(b.id, &["BTC".into()]).unwrap().len(), 1);
        assert_eq!(
            interest.try_recv().unwrap(),
            InterestChange::Wanted("BTC".into())
        );
        assert!(
            interest.try_recv().is_err(),
            "second subscriber is not a new interest"
        );
        assert_eq!(
            hub.subscribe(a.id, &["X".into(), "Y".into()]),
            Err(SubscribeError::TooMany(2))
        );

        assert_eq!(hub.publish("BTC", "1".into()), 2);
        assert_eq!(a.queue.try_recv().unwrap().as_str(), "1");
        // b never reads: its queue of 2 is full after two messages, so the
        // third drops it while a (which reads) gets every message.
        assert_eq!(hub.publish("BTC", "2".into()), 2);
        assert_eq!(a.queue.try_recv().unwrap().as_str(), "2");
        assert_eq!(hub.publish("BTC", "3".into()), 1);
        assert_eq!(a.queue.try_recv().unwrap().as_str(), "3");
        assert!(b.kicked.try_recv().unwrap().contains("too slow"));
        assert_eq!(hub.dropped_slow(), 1);
        hub.unregister(a.id);
        assert_eq!(
            interest.try_recv().unwrap(),
            InterestChange::Unwanted("BTC".into())
        );
        assert!(!hub.is_wanted("BTC"));
    }
}
