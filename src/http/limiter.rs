//! Per-address limit on authentication failures. A legacy `cverify` is only
//! 32 bits, so unlimited guessing would forge one in days; genuine ClickBank
//! posts never fail, so a generous limit costs them nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Bound on tracked addresses, so a spoofing flood cannot grow the map forever.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug)]
pub struct FailureLimiter {
    max_per_window: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn new(max_per_minute: u32) -> Self {
        Self {
            max_per_window: max_per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(wait)` when `ip` has used up its failures for this window.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let (start, count) = windows.get(&ip)?;
        let elapsed = start.elapsed();
        (elapsed < WINDOW && *count >= self.max_per_window).then(|| WINDOW - elapsed)
    }

    /// Counts one failure; true when this one crossed the limit.
    pub fn failed(&self, ip: IpAddr) -> bool {
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
        entry.1 == self.max_per_window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_and_only_that_address() {
        let l = FailureLimiter::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!l.failed(a));
        assert!(!l.failed(a));
        assert!(l.blocked(a).is_none());
        assert!(l.failed(a));
        assert!(l.blocked(a).is_some());
        assert!(l.blocked(b).is_none());
    }
}
