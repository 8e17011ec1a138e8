//! `EngineLock`: one partition's engine behind a read-write lock, and how
//! async queries wait for it.
//!
//! Queries share the engine; mutations (batch parts, expiry, restore) hold it
//! alone, for a few ms each at full rate. A query from async code must not wait
//! for it on a runtime worker (every task queued there would stall), so a
//! query that finds the engine taken waits off the workers. It used to wait on
//! a blocking-pool thread of its own: a flood of pollers during one part
//! started a thread per query, up to tokio's 512. Now the queries that find
//! the engine taken queue up, and one blocking-pool thread, the doorman, waits
//! for the engine on behalf of all of them: once it holds a read guard, it
//! lets the queued queries in, they read on their own tasks (sharing the
//! guard), and it releases the engine when the last has read. So waiting
//! costs one thread per shard, whatever the number of queries.
//!
//! With 1,000 tasks each asking stats every 5 ms while batches apply back to
//! back (`cargo bench --bench shard_queries`, flood row, 3 alternated pairs,
//! with the 20,000-swap parts of the time):
//! 1 thread started instead of 512, p99 24–27 ms instead of 30–32, 565–602k
//! queries answered instead of 510–530k, and the batches applied at 736–828k
//! swaps/s instead of 593–660k (the threads no longer take the cores). With 4
//! stats tasks while streaming (`shard_pipeline`, 3 pairs) rates and latencies
//! stayed within the noise.

use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::oneshot;

use crate::window::WindowEngine;

/// An engine read asked from async code that never ran: the runtime shut
/// down before the blocking pool got to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the process is shutting down")]
pub struct ShuttingDown;

/// The engine, shared by queries, held alone by mutations.
pub(crate) struct EngineLock {
    engine: RwLock<WindowEngine>,
    waiting: Mutex<WaitingReads>,
}

/// Async queries waiting for the engine, and whether the doorman is on duty.
#[derive(Default)]
struct WaitingReads {
    /// One sender per queued query: its turn comes through it.
    queued: Vec<oneshot::Sender<Turn>>,
    /// A doorman runs (or is about to) and will see `queued`.
    doorman: bool,
}

/// A queued query's turn to read. While any turn of a round is alive, the
/// doorman holds a read guard: no mutation can start, and the query's
/// `try_read_recursive` succeeds even while a mutation waits for the engine.
struct Turn {
    /// Dropped when the query has read; the doorman waits for all of them.
    _read: mpsc::Sender<()>,
}

impl EngineLock {
    pub(crate) fn new(engine: WindowEngine) -> Self {
        Self {
            engine: RwLock::new(engine),
            waiting: Mutex::new(WaitingReads::default()),
        }
    }

    /// The engine for a mutation, alone.
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, WindowEngine> {
        self.engine.write()
    }

    /// The engine for a query from a thread that may wait (not a runtime
    /// worker).
    pub(crate) fn read_blocking(&self) -> RwLockReadGuard<'_, WindowEngine> {
        self.engine.read()
    }

    /// The engine for a mutation, if nothing holds it (tests).
    #[cfg(test)]
    pub(crate) fn try_write(&self) -> Option<RwLockWriteGuard<'_, WindowEngine>> {
        self.engine.try_write()
    }

    /// Runs `read` on the engine, for async code. In place when no mutation
    /// holds or waits for the engine; otherwise after waiting in the queue
    /// that the doorman lets in as soon as the engine is handed to readers
    /// (mutations release it to waiting readers first, see
    /// `ShardCore::change`). The read itself runs on the calling task.
    pub(crate) async fn read<R>(
        self: &Arc<Self>,
        read: impl FnOnce(&WindowEngine) -> R,
    ) -> Result<R, ShuttingDown> {
        if let Some(engine) = self.engine.try_read() {
            return Ok(read(&engine));
        }
        let (engine, turn) = loop {
            let turn = self.wait_turn().await?;
            // The doorman's guard is held while `turn` lives, so this does
            // not fail; were it to, the query would queue again.
            if let Some(engine) = self.engine.try_read_recursive() {
                break (engine, turn);
            }
        };
        let answer = read(&engine);
        drop(engine);
        drop(turn);
        Ok(answer)
    }

    /// Queues for a turn, starting the doorman if none is on duty.
    async fn wait_turn(self: &Arc<Self>) -> Result<Turn, ShuttingDown> {
        let (sender, turn) = oneshot::channel();
        let start_doorman = {
            let mut waiting = self.waiting.lock();
            waiting.queued.push(sender);
            !std::mem::replace(&mut waiting.doorman, true)
        };
        if start_doorman {
            let doorman = Doorman {
                lock: self.clone(),
                finished: false,
            };
            // Detached: the queued queries wait on their turns, not on it.
            drop(tokio::task::spawn_blocking(move || doorman.serve()));
        }
        turn.await.map_err(|_| ShuttingDown)
    }
}

/// The doorman's duty, on a blocking-pool thread: in rounds, takes the queued
/// queries, waits for the engine, lets them in and waits until all have read.
/// Dropped unrun (the runtime shut down first), it empties the queue, so the
/// queued queries end with [`ShuttingDown`] instead of waiting forever.
struct Doorman {
    lock: Arc<EngineLock>,
    finished: bool,
}

impl Doorman {
    fn serve(mut self) {
        let lock = &self.lock;
        loop {
            let queued = {
                let mut waiting = lock.waiting.lock();
                if waiting.queued.is_empty() {
                    // Under the queue's lock: a query queued after this
                    // starts a new doorman.
                    waiting.doorman = false;
                    break;
                }
                std::mem::take(&mut waiting.queued)
            };
            // Queries that queue from now on wait for the next round: a
            // stream of them cannot keep the engine from the next mutation.
            let engine = lock.engine.read();
            let (read, all_read) = mpsc::channel();
            for query in queued {
                // A query that gave up has dropped its receiver: its turn
                // comes back here and is dropped at once.
                let _ = query.send(Turn {
                    _read: read.clone(),
                });
            }
            drop(read);
            // Returns (with an error) once every turn of the round is dropped.
            let _ = all_read.recv();
            drop(engine);
        }
        self.finished = true;
    }
}

impl Drop for Doorman {
    fn drop(&mut self) {
        if !self.finished {
            let mut waiting = self.lock.waiting.lock();
            waiting.queued.clear();
            waiting.doorman = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::window::EngineConfig;

    fn lock() -> Arc<EngineLock> {
        Arc::new(EngineLock::new(WindowEngine::new(
            EngineConfig::service_defaults(),
        )))
    }

    /// A 2-worker runtime, as a shard pod's, counting the threads it starts.
    fn runtime() -> (tokio::runtime::Runtime, Arc<AtomicUsize>) {
        let started = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_start({
                let started = started.clone();
                move || {
                    started.fetch_add(1, Ordering::SeqCst);
                }
            })
            .enable_all()
            .build()
            .expect("runtime");
        (runtime, started)
    }

    /// Spawns `n` tasks that each read once, and returns when every one is
    /// asking (so queued, while a mutation holds the engine) and the doorman
    /// has had time to start and park on the engine.
    fn ask<R: Send + 'static>(
        runtime: &tokio::runtime::Runtime,
        lock: &Arc<EngineLock>,
        n: usize,
        read: impl Fn(&WindowEngine) -> R + Clone + Send + 'static,
    ) -> Vec<tokio::task::JoinHandle<Result<R, ShuttingDown>>> {
        let asking = Arc::new(AtomicUsize::new(0));
        let queries = (0..n)
            .map(|_| {
                let (lock, asking, read) = (lock.clone(), asking.clone(), read.clone());
                runtime.spawn(async move {
                    asking.fetch_add(1, Ordering::SeqCst);
                    lock.read(read).await
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while asking.load(Ordering::SeqCst) < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        queries
    }

    /// 200 queries that find the engine held by a mutation wait on one
    /// blocking-pool thread, not one each (as they did), and all read once
    /// it is released.
    #[test]
    fn queries_waiting_for_a_mutation_share_one_thread() {
        let (runtime, started) = runtime();
        let lock = lock();
        let held = lock.write();
        let queries = ask(&runtime, &lock, 200, |e| e.token_count());
        let threads = started.load(Ordering::SeqCst);
        drop(held);
        for query in queries {
            assert_eq!(runtime.block_on(query).expect("query task"), Ok(0));
        }
        assert!(
            threads <= 2 + 1,
            "{threads} threads: 2 workers and 1 doorman at most"
        );
    }

    /// Queries queued while a mutation holds the engine read before the next
    /// mutation starts: the mutation hands the engine to the waiting doorman
    /// (`unlock_fair`), which keeps it until every query it let in has read.
    #[test]
    fn queued_queries_read_between_two_mutations() {
        let (runtime, _) = runtime();
        let lock = lock();
        let mutations = Arc::new(AtomicUsize::new(0));
        let (queued, release) = mpsc::channel::<()>();
        let writer = std::thread::spawn({
            let (lock, mutations) = (lock.clone(), mutations.clone());
            move || {
                for i in 0..50 {
                    let engine = lock.write();
                    if i == 0 {
                        let _ = release.recv();
                    } else {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    mutations.fetch_add(1, Ordering::SeqCst);
                    RwLockWriteGuard::unlock_fair(engine);
                }
            }
        });
        while lock.engine.try_write().is_some() {
            std::thread::yield_now();
        }
        let queries = ask(&runtime, &lock, 100, {
            let mutations = mutations.clone();
            move |_| mutations.load(Ordering::SeqCst)
        });
        queued.send(()).expect("writer");
        let seen: Vec<usize> = queries
            .into_iter()
            .map(|q| runtime.block_on(q).expect("query task").expect("read"))
            .collect();
        writer.join().expect("writer");
        assert!(
            seen.iter().all(|&m| m < 50),
            "a query waited for all 50 mutations: saw {seen:?}"
        );
    }

    /// A query that panics while let in ends its turn: the others read, and
    /// the next mutation gets the engine.
    #[test]
    fn a_panicking_query_does_not_keep_the_engine() {
        let (runtime, _) = runtime();
        let lock = lock();
        let held = lock.write();
        let panicking = runtime.spawn({
            let lock = lock.clone();
            async move { lock.read(|_| panic!("a bad query")).await }
        });
        let reading = runtime.spawn({
            let lock = lock.clone();
            async move { lock.read(|e| e.token_count()).await }
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        assert!(runtime.block_on(panicking).is_err_and(|e| e.is_panic()));
        assert_eq!(runtime.block_on(reading).expect("query task"), Ok(0));
        let (done, finished) = mpsc::channel();
        std::thread::spawn({
            let lock = lock.clone();
            move || done.send(lock.write().token_count())
        });
        assert_eq!(finished.recv_timeout(Duration::from_secs(10)), Ok(0));
    }

    /// A doorman dropped before it ran (the runtime shut down) ends the
    /// queued queries with `ShuttingDown`, and the next query starts anew.
    #[test]
    fn a_doorman_dropped_unrun_ends_the_queue() {
        let lock = lock();
        let (sender, turn) = oneshot::channel();
        {
            let mut waiting = lock.waiting.lock();
            waiting.queued.push(sender);
            waiting.doorman = true;
        }
        drop(Doorman {
            lock: lock.clone(),
            finished: false,
        });
        assert!(turn.blocking_recv().is_err());
        assert!(!lock.waiting.lock().doorman);
    }
}
