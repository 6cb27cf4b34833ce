//! Counting over time: sliding windows, distinct values within a window, hold-offs and
//! size-bounded tables. Time is a plain millisecond count passed in by the caller (the
//! virtual clock of the tests, the monotonic clock of the binary), never read here.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Milliseconds on the caller's monotonic clock.
pub type Ms = u64;

/// How many events happened within the last `window` ms.
#[derive(Debug, Clone)]
pub struct EventWindow {
    window: Ms,
    times: VecDeque<Ms>,
}

impl EventWindow {
    pub fn new(window: Ms) -> EventWindow {
        EventWindow {
            window,
            times: VecDeque::new(),
        }
    }
    fn prune(&mut self, now: Ms) {
        while let Some(&t) = self.times.front() {
            if t.saturating_add(self.window) <= now {
                self.times.pop_front();
            } else {
                break;
            }
        }
    }
    /// Records an event at `now`; returns how many events the window holds, this one
    /// included. At most `cap` timestamps are kept (the count saturates there).
    pub fn push(&mut self, now: Ms, cap: usize) -> usize {
        self.prune(now);
        if self.times.len() >= cap.max(1) {
            self.times.pop_front();
        }
        self.times.push_back(now);
        self.times.len()
    }
    pub fn count(&mut self, now: Ms) -> usize {
        self.prune(now);
        self.times.len()
    }
    pub fn clear(&mut self) {
        self.times.clear();
    }
    /// When the last event happened, if any is still held.
    pub fn last(&self) -> Option<Ms> {
        self.times.back().copied()
    }
}

/// How many distinct values were seen within the last `window` ms.
///
/// A value seen again within `window / 16` of its last sighting is not refreshed, so a
/// flood of one value costs at most 16 entries per window; such a value may leave the
/// window up to `window / 16` early.
#[derive(Debug, Clone)]
pub struct DistinctWindow<V> {
    window: Ms,
    order: VecDeque<(Ms, V)>,
    last_seen: HashMap<V, Ms>,
}

impl<V: Copy + Eq + Hash> DistinctWindow<V> {
    pub fn new(window: Ms) -> DistinctWindow<V> {
        DistinctWindow {
            window,
            order: VecDeque::new(),
            last_seen: HashMap::new(),
        }
    }
    fn prune(&mut self, now: Ms) {
        while let Some(&(t, v)) = self.order.front() {
            if t.saturating_add(self.window) > now {
                break;
            }
            self.order.pop_front();
            if self.last_seen.get(&v) == Some(&t) {
                self.last_seen.remove(&v);
            }
        }
    }
    /// Records `value` at `now`; returns the number of distinct values in the window.
    pub fn insert(&mut self, now: Ms, value: V) -> usize {
        self.prune(now);
        let gap = (self.window / 16).max(1);
        match self.last_seen.get(&value) {
            Some(&t) if now < t.saturating_add(gap) => {}
            _ => {
                self.last_seen.insert(value, now);
                self.order.push_back((now, value));
            }
        }
        self.last_seen.len()
    }
    pub fn len(&mut self, now: Ms) -> usize {
        self.prune(now);
        self.last_seen.len()
    }
    pub fn is_empty(&mut self, now: Ms) -> bool {
        self.len(now) == 0
    }
    pub fn clear(&mut self) {
        self.order.clear();
        self.last_seen.clear();
    }
}

/// Lets one thing through per key per `period` ms: alerts are not repeated for every
/// packet of a scan or a flood. Holds at most [`HOLDOFF_CAP`] keys; past that, expired
/// keys are swept and then an arbitrary one is forgotten (it may fire again early).
#[derive(Debug, Clone)]
pub struct Holdoff<K> {
    period: Ms,
    last: HashMap<K, Ms>,
}

pub const HOLDOFF_CAP: usize = 65_536;

impl<K: Copy + Eq + Hash> Holdoff<K> {
    pub fn new(period: Ms) -> Holdoff<K> {
        Holdoff {
            period,
            last: HashMap::new(),
        }
    }
    /// Whether `key` may fire at `now`; if so, its hold-off starts now.
    pub fn allow(&mut self, now: Ms, key: K) -> bool {
        match self.last.get(&key) {
            Some(&t) if now < t.saturating_add(self.period) => false,
            found => {
                if found.is_none() && self.last.len() >= HOLDOFF_CAP {
                    self.sweep(now);
                    if self.last.len() >= HOLDOFF_CAP {
                        if let Some(victim) = self.last.keys().next().copied() {
                            self.last.remove(&victim);
                        }
                    }
                }
                self.last.insert(key, now);
                true
            }
        }
    }
    /// Forgets keys whose hold-off is over.
    pub fn sweep(&mut self, now: Ms) {
        let period = self.period;
        self.last.retain(|_, t| now < t.saturating_add(period));
    }
    pub fn len(&self) -> usize {
        self.last.len()
    }
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// A map with at most `cap` entries. When full, an arbitrary entry makes room for a new
/// key (and is counted in `evicted`): a flood of spoofed sources can cost the tracking of
/// others, never unbounded memory.
#[derive(Debug, Clone)]
pub struct Table<K, V> {
    cap: usize,
    map: HashMap<K, V>,
    pub evicted: u64,
}

impl<K: Copy + Eq + Hash, V> Table<K, V> {
    pub fn new(cap: usize) -> Table<K, V> {
        Table {
            cap: cap.max(1),
            map: HashMap::new(),
            evicted: 0,
        }
    }
    /// The entry for `key`, made with `make` (after eviction if needed) when missing.
    pub fn entry(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            if let Some(victim) = self.map.keys().next().copied() {
                self.map.remove(&victim);
                self.evicted += 1;
            }
        }
        self.map.entry(key).or_insert_with(make)
    }
    /// Sets `key` to `value` (after eviction if needed).
    pub fn insert(&mut self, key: K, value: V) {
        match self.map.get_mut(&key) {
            Some(v) => *v = value,
            None => {
                self.entry(key, || value);
            }
        }
    }
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key)
    }
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key)
    }
    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }
    pub fn retain(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        self.map.retain(keep);
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn is_full(&self) -> bool {
        self.map.len() >= self.cap
    }
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn event_window_slides() {
        let mut w = EventWindow::new(1000);
        assert_eq!(w.push(0, 100), 1);
        assert_eq!(w.push(500, 100), 2);
        assert_eq!(w.push(999, 100), 3);
        // The event at 0 leaves the window at exactly 1000.
        assert_eq!(w.push(1000, 100), 3);
        assert_eq!(w.count(1600), 2);
        assert_eq!(w.count(1999), 1);
        assert_eq!(w.count(2000), 0);
    }

    #[test]
    fn event_window_is_capped() {
        let mut w = EventWindow::new(1000);
        for t in 0..50 {
            assert!(w.push(t, 10) <= 10);
        }
        assert_eq!(w.count(60), 10);
    }

    #[test]
    fn distinct_counts_values_not_events() {
        let mut d = DistinctWindow::new(1000);
        assert_eq!(d.insert(0, 80u16), 1);
        assert_eq!(d.insert(10, 80), 1);
        assert_eq!(d.insert(20, 443), 2);
        // 80 seen again at 900: it stays although its first sighting expires.
        assert_eq!(d.insert(900, 80), 2);
        // Within window/16 (62 ms) of that, a sighting does not refresh it.
        assert_eq!(d.insert(950, 80), 2);
        assert_eq!(d.len(1015), 2);
        assert_eq!(d.len(1021), 1); // 443 expired
        assert_eq!(d.len(1900), 0);
        assert!(d.is_empty(1900));
    }

    #[test]
    fn a_flood_of_one_value_stays_small() {
        let mut d = DistinctWindow::new(1600);
        for t in 0..100_000 {
            assert_eq!(d.insert(t, 7u16), 1);
        }
        assert!(d.order.len() <= 20, "{}", d.order.len());
    }

    #[test]
    fn holdoff_is_bounded() {
        let mut h = Holdoff::new(1_000_000);
        for k in 0..(HOLDOFF_CAP as u32 + 10) {
            assert!(h.allow(0, k));
        }
        assert_eq!(h.len(), HOLDOFF_CAP);
    }

    #[test]
    fn holdoff_lets_one_through_per_period() {
        let mut h = Holdoff::new(100);
        assert!(h.allow(0, 'a'));
        assert!(!h.allow(99, 'a'));
        assert!(h.allow(50, 'b'));
        assert!(h.allow(100, 'a'));
        h.sweep(1000);
        assert!(h.is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let mut t: Table<u32, u32> = Table::new(3);
        for k in 0..10 {
            *t.entry(k, || 0) += 1;
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.evicted, 7);
        assert!(t.contains(&9));
        *t.entry(9, || 0) += 1;
        assert_eq!(t.get(&9), Some(&2));
        t.insert(9, 5);
        assert_eq!((t.get(&9), t.len()), (Some(&5), 3));
        // A new key in a full table evicts one.
        t.insert(100, 1);
        assert_eq!((t.get(&100), t.len(), t.evicted), (Some(&1), 3, 8));
    }
}
