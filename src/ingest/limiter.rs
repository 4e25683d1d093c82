//! Per-address limit on failed posts, of every form. A legacy `cverify` is
//! only 32 bits, so unlimited guessing would forge one in days; and every
//! failure kept and logged in full costs a write and a line, so one address
//! flooding forged posts would slow everyone else's. Genuine ClickBank posts
//! never fail, so a generous limit costs them nothing. In memory only: the
//! request path never writes for it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Bound on tracked addresses, so a spoofing flood cannot grow the map forever.
const MAX_TRACKED: usize = 10_000;

/// The limit itself (`max` per minute) comes with each call, from the
/// runtime in force, so a reload changes it without losing the counts.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// `Some(wait)` when `ip` has used up its `max` failures for this window.
    pub fn blocked(&self, ip: IpAddr, max: u32) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let (start, count) = windows.get(&ip)?;
        let elapsed = start.elapsed();
        (elapsed < WINDOW && *count >= max).then(|| WINDOW - elapsed)
    }

    /// Counts one failure; true when this one reached the limit `max`.
    pub fn failed(&self, ip: IpAddr, max: u32) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&ip) {
            windows.retain(|_, (start, _)| start.elapsed() < WINDOW);
            if windows.len() >= MAX_TRACKED {
                windows.clear();
            }
        }
        let now = Instant::now();
        let entry = windows.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 == max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_and_only_that_address() {
        let l = FailureLimiter::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!l.failed(a, 3));
        assert!(!l.failed(a, 3));
        assert!(l.blocked(a, 3).is_none());
        assert!(l.failed(a, 3));
        assert!(l.blocked(a, 3).is_some());
        assert!(l.blocked(b, 3).is_none());
    }
}
