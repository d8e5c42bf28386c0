//! Change indexes, bounded history and waking watchers.
//!
//! The [`Hub`] keeps the current change index, the index of each topic's
//! last change (a service's instance set, a config key) and a bounded
//! history of recent changes. One change costs one notification: every
//! waiting watcher holds a receiver of the same `tokio::sync::watch`
//! channel; on wake-up each compares its topic's index in memory (no store
//! query) and goes back to sleep if its topic did not move.
//!
//! Watchers asking for changes after an index older than the retained
//! history get [`Error::TooOld`] (HTTP 410): they must list again and watch
//! from the index the listing returns, instead of silently missing changes.
//!
//! ```
//! use jadugar_registry::model::{Change, Topic};
//! use jadugar_registry::watch::Hub;
//!
//! let hub = Hub::new(0, 2);
//! let topic = |s: &str| Topic::Service { service: s.to_owned() };
//! for (i, s) in ["a", "b", "a"].into_iter().enumerate() {
//!     hub.publish(Change { index: i as u64 + 1, topic: topic(s) });
//! }
//! assert_eq!(hub.topic_index(&topic("a")), 3);
//! assert_eq!(hub.changes_since(1, |_| true).unwrap().len(), 2);
//! assert!(hub.changes_since(0, |_| true).is_err()); // index 1 fell out of the history
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{PoisonError, RwLock};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::Error;
use crate::model::{Change, Topic};

#[derive(Debug)]
struct State {
    current: u64,
    floor: u64,
    history: VecDeque<Change>,
    topics: HashMap<Topic, u64>,
}

/// The registry's change indexes and history; see the [module docs](self).
#[derive(Debug)]
pub struct Hub {
    state: RwLock<State>,
    tick: watch::Sender<u64>,
    capacity: usize,
}

impl Hub {
    /// A hub whose history starts after `start` (earlier indexes are too
    /// old) and keeps at most `capacity` changes.
    pub fn new(start: u64, capacity: usize) -> Self {
        Self {
            state: RwLock::new(State {
                current: start,
                floor: start,
                history: VecDeque::new(),
                topics: HashMap::new(),
            }),
            tick: watch::channel(start).0,
            capacity: capacity.max(1),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a change and wakes every watcher. Returns `false` (and does
    /// nothing) if the change was already known, e.g. a host's own change
    /// coming back through the shared store's broadcast.
    pub fn publish(&self, change: Change) -> bool {
        let current = {
            let mut state = self.write();
            if change.index <= state.floor {
                return false;
            }
            let pos = state.history.partition_point(|c| c.index < change.index);
            if state
                .history
                .get(pos)
                .is_some_and(|c| c.index == change.index)
            {
                return false;
            }
            let entry = state.topics.entry(change.topic.clone()).or_insert(0);
            *entry = (*entry).max(change.index);
            state.current = state.current.max(change.index);
            state.history.insert(pos, change);
            while state.history.len() > self.capacity {
                if let Some(old) = state.history.pop_front() {
                    state.floor = old.index;
                }
            }
            state.current
        };
        self.tick.send_replace(current);
        true
    }

    /// Sets a topic's index if higher (used when loading state).
    pub fn observe(&self, topic: Topic, index: u64) {
        let mut state = self.write();
        let entry = state.topics.entry(topic).or_insert(0);
        *entry = (*entry).max(index);
    }

    /// After notifications may have been lost: everything at or below
    /// `current` is no longer covered by the history, and `topics` (each
    /// with the index to report) moved.
    pub fn resync(&self, current: u64, moved: impl IntoIterator<Item = Topic>) {
        let now = {
            let mut state = self.write();
            if current > state.current {
                state.current = current;
                state.floor = state.floor.max(current);
                state.history.retain(|c| c.index > current);
            }
            let index = state.current;
            for topic in moved {
                state.topics.insert(topic, index);
            }
            state.current
        };
        self.tick.send_replace(now);
    }

    /// The last change index seen.
    pub fn current(&self) -> u64 {
        self.read().current
    }

    /// The index of `topic`'s last change (0 if none seen).
    pub fn topic_index(&self, topic: &Topic) -> u64 {
        self.read().topics.get(topic).copied().unwrap_or(0)
    }

    /// Whether an index is known (in the history).
    pub fn knows(&self, index: u64) -> bool {
        let state = self.read();
        index <= state.floor
            || state
                .history
                .binary_search_by_key(&index, |c| c.index)
                .is_ok()
    }

    /// The changes after `since` whose topic passes `filter`, oldest
    /// first; [`Error::TooOld`] if the history no longer reaches back to
    /// `since`.
    pub fn changes_since(
        &self,
        since: u64,
        filter: impl Fn(&Topic) -> bool,
    ) -> Result<Vec<Change>, Error> {
        let state = self.read();
        if since < state.floor {
            return Err(Error::TooOld {
                requested: since,
                oldest: state.floor,
            });
        }
        let start = state.history.partition_point(|c| c.index <= since);
        Ok(state
            .history
            .range(start..)
            .filter(|c| filter(&c.topic))
            .cloned()
            .collect())
    }

    /// A receiver woken on every change (its value is the current index).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }

    /// Waits until `ready()` holds or `deadline` passes; returns whether it
    /// held. `ready` runs once per change, against memory only.
    pub async fn wait_until(&self, deadline: Instant, mut ready: impl FnMut() -> bool) -> bool {
        let mut rx = self.tick.subscribe();
        loop {
            if ready() {
                return true;
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return ready();
                    }
                }
                () = tokio::time::sleep_until(deadline) => return ready(),
            }
        }
    }
}
