//! When to sync: upstream's bounded-frequency runner, as a small clock-driven state machine.
//!
//! * A change requests a sync. Syncs are never closer together than `min_interval`
//!   (`minSyncPeriod`), so a burst of changes is coalesced into one sync.
//! * A sync runs at least every `max_interval` (`syncPeriod`) even without changes.
//! * A failed sync is retried with exponential backoff (from 1 s, capped at `max_interval`),
//!   and the sync after a failure is a full one, as is one at least every hour.

use std::time::Duration;

use tokio::time::Instant;

/// How often upstream forces a full resync even when nothing failed.
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// First retry delay after a failed sync.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);

/// Decides when the next sync runs and whether it must be full.
#[derive(Debug)]
pub struct SyncRunner {
    min_interval: Duration,
    max_interval: Duration,
    last_run: Option<Instant>,
    last_full: Option<Instant>,
    requested: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    needs_full: bool,
}

impl SyncRunner {
    /// A runner whose first sync is full.
    pub fn new(min_interval: Duration, max_interval: Duration) -> Self {
        SyncRunner {
            min_interval,
            max_interval: max_interval.max(min_interval),
            last_run: None,
            last_full: None,
            requested: false,
            retry_at: None,
            backoff: INITIAL_BACKOFF,
            needs_full: true,
        }
    }

    /// Something changed: sync as soon as `min_interval` allows.
    pub fn request(&mut self) {
        self.requested = true;
    }

    /// Forces the next sync to be a full one (e.g. node facts changed).
    pub fn request_full(&mut self) {
        self.needs_full = true;
        self.requested = true;
    }

    /// The instant at which a sync is next due.
    pub fn next_due(&self, now: Instant) -> Instant {
        // A retry waits out its backoff even when a change arrives meanwhile.
        if let Some(retry) = self.retry_at {
            return retry;
        }
        let Some(last) = self.last_run else {
            return now;
        };
        let wait = if self.requested {
            self.min_interval
        } else {
            self.max_interval
        };
        last + wait
    }

    /// True when a sync should run at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.next_due(now) <= now
    }

    /// Called when a sync starts: whether it must be full.
    pub fn start(&mut self, now: Instant) -> bool {
        self.last_run = Some(now);
        self.requested = false;
        self.retry_at = None;
        self.needs_full
            || self
                .last_full
                .is_none_or(|t| now.duration_since(t) >= FULL_SYNC_PERIOD)
    }

    /// Called when the sync that began at the last [`start`](Self::start) ended.
    pub fn finish(&mut self, now: Instant, full: bool, ok: bool) {
        if ok {
            self.backoff = INITIAL_BACKOFF;
            if full {
                self.needs_full = false;
                self.last_full = self.last_run;
            }
        } else {
            self.needs_full = true;
            self.retry_at = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(self.max_interval.max(INITIAL_BACKOFF));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn first_sync_is_immediate_and_full() {
        let t0 = Instant::now();
        let mut r = SyncRunner::new(MIN, MAX);
        assert!(r.is_due(t0));
        assert!(r.start(t0));
        r.finish(t0, true, true);
        assert!(!r.is_due(t0));
    }

    #[test]
    fn a_burst_of_requests_is_coalesced_to_min_interval() {
        let t0 = Instant::now();
        let mut r = SyncRunner::new(MIN, MAX);
        let full = r.start(t0);
        r.finish(t0, full, true);
        for ms in [10, 200, 900] {
            r.request();
            assert!(
                !r.is_due(t0 + Duration::from_millis(ms)),
                "due {ms} ms after a sync"
            );
        }
        assert_eq!(r.next_due(t0), t0 + MIN);
        assert!(
            !r.start(t0 + MIN),
            "a change after a good full sync is partial"
        );
    }

    #[test]
    fn without_changes_a_sync_runs_every_max_interval() {
        let t0 = Instant::now();
        let mut r = SyncRunner::new(MIN, MAX);
        r.start(t0);
        r.finish(t0, true, true);
        assert!(!r.is_due(t0 + MAX - secs(1)));
        assert!(r.is_due(t0 + MAX));
    }

    #[test]
    fn failure_retries_with_backoff_and_forces_full() {
        let t0 = Instant::now();
        let mut r = SyncRunner::new(MIN, MAX);
        r.start(t0);
        r.finish(t0, true, false);
        assert_eq!(r.next_due(t0), t0 + secs(1));
        r.request();
        assert_eq!(
            r.next_due(t0),
            t0 + secs(1),
            "a change does not cut the backoff short"
        );
        let t1 = t0 + secs(1);
        assert!(r.start(t1), "the sync after a failure is full");
        r.finish(t1, true, false);
        assert_eq!(r.next_due(t1), t1 + secs(2));
        let t2 = t1 + secs(2);
        assert!(r.start(t2));
        r.finish(t2, true, true);
        assert_eq!(r.next_due(t2), t2 + MAX);
        r.request();
        assert!(!r.start(t2 + MIN), "full only until one succeeded");
    }

    #[test]
    fn backoff_is_capped_at_max_interval() {
        let mut now = Instant::now();
        let mut r = SyncRunner::new(MIN, MAX);
        for _ in 0..10 {
            r.start(now);
            r.finish(now, true, false);
            now = r.next_due(now);
        }
        let before = now;
        r.start(now);
        r.finish(now, true, false);
        assert_eq!(r.next_due(now), before + MAX);
    }

    #[test]
    fn full_sync_at_least_hourly() {
        let t0 = Instant::now();
        let mut r = SyncRunner::new(MIN, MAX);
        r.start(t0);
        r.finish(t0, true, true);
        assert!(!r.start(t0 + secs(60)));
        r.finish(t0 + secs(60), false, true);
        assert!(r.start(t0 + FULL_SYNC_PERIOD));
    }

    #[test]
    fn request_full_forces_a_full_sync() {
        let t0 = Instant::now();
        let mut r = SyncRunner::new(MIN, MAX);
        r.start(t0);
        r.finish(t0, true, true);
        r.request_full();
        assert_eq!(r.next_due(t0), t0 + MIN);
        assert!(r.start(t0 + MIN));
    }
}
