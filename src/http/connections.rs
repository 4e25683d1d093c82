//! Open connections: what each is doing (requests in flight, last activity),
//! the caps on how many may be open and how many requests may be in flight
//! (in all and per source address), and which idle connection makes room
//! when a connection cap is reached. A request past an in-flight cap is shed:
//! answered 503 with `Retry-After` at once (see [`super::server`]).
//!
//! The request path touches only atomics (its connection's, its address's and
//! the total); the shared registry is locked once when a connection opens and
//! once when it closes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Settings;
use crate::metrics::Metrics;

/// Descriptors kept out of the connection budget for everything else: stdio,
/// the runtime's epoll and wake-up descriptors, the listener, SQLite's
/// database, journal and WAL files, the certificate files, and room for an
/// operator listener. 64 is several times what a running daemon shows in
/// `/proc/PID/fd` besides its connections and its database pool.
const FD_RESERVE: u64 = 64;
/// Connections made to close (to make room) that may still hold their
/// descriptor: beyond this, new connections are refused until they are gone.
/// Closing an idle connection takes a poll, so 64 is never reached unless
/// the accept loop outruns the runtime.
const CLOSING_HEADROOM: usize = 64;
/// Past `CLOSING_HEADROOM`, an address with no connection open is still let
/// in from a reserve of its own: a flood that outruns the closing of its own
/// evicted connections must not shut out ClickBank, which opens one at a time.
const NEWCOMER_RESERVE: usize = 32;
/// Descriptors one action execution may hold: a webhook's socket, or a
/// command's stdin, stdout and stderr pipes.
const FDS_PER_ACTION_SLOT: u64 = 3;

/// The caps in force, derived once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_ip: usize,
    /// Requests in flight, in all and per source address.
    pub in_flight: usize,
    pub in_flight_per_ip: usize,
    /// The soft open-file limit after raising it, if it could be read.
    pub nofile: Option<u64>,
}

/// Raises the soft open-file limit to the hard limit, logs the outcome, and
/// clamps `server.max_connections` so that `accept` always has a descriptor
/// to spare for the database pool, files and actions.
pub fn caps(settings: &Settings) -> Caps {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).ok();
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            tracing::info!(
                before = before.map(|(soft, _)| soft),
                soft = n,
                hard = before.map(|(_, hard)| hard),
                "http: open-file limit raised to the hard limit"
            );
            Some(n)
        }
        Err(e) => {
            tracing::warn!(error = %e, "http: cannot raise the open-file limit");
            before.map(|(soft, _)| soft)
        }
    };
    let actions: u64 = settings
        .actions
        .iter()
        .filter(|a| a.enabled)
        .map(|a| u64::from(a.concurrency))
        .sum();
    let reserve = FD_RESERVE
        + (CLOSING_HEADROOM + NEWCOMER_RESERVE) as u64
        + u64::from(settings.database.max_connections)
        + actions * FDS_PER_ACTION_SLOT;
    let configured = settings.server.max_connections;
    let total = match nofile {
        Some(n) => {
            let room = usize::try_from(n.saturating_sub(reserve)).unwrap_or(usize::MAX);
            configured.min(room).max(1)
        }
        None => configured,
    };
    if total < configured {
        tracing::warn!(
            configured,
            effective = total,
            nofile,
            reserve,
            "http: server.max_connections lowered to fit the open-file limit"
        );
    }
    let per_ip = settings.server.max_connections_per_ip.min(total);
    let in_flight = settings.server.max_in_flight;
    let in_flight_per_ip = settings.server.max_in_flight_per_ip.min(in_flight);
    tracing::info!(
        max_connections = total,
        max_connections_per_ip = per_ip,
        max_in_flight = in_flight,
        max_in_flight_per_ip = in_flight_per_ip,
        "http: connection limits"
    );
    Caps {
        total,
        per_ip,
        in_flight,
        in_flight_per_ip,
        nofile,
    }
}

/// One connection's state, shared by its task and its requests.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    ip: IpAddr,
    epoch: Instant,
    in_flight: AtomicU32,
    /// Milliseconds since `epoch` of the last request's start or end (or of
    /// the accept, before the first request).
    last_active_ms: AtomicU64,
    served: AtomicBool,
    evict: Notify,
    /// Requests in flight from this connection's address (shared by all of
    /// its connections), and the cap on them (`u32::MAX` when exempt).
    peer_in_flight: Arc<AtomicU32>,
    peer_cap: u32,
    /// Requests in flight on every connection, and the cap on them.
    total_in_flight: Arc<AtomicUsize>,
    total_cap: usize,
}

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// `server.max_in_flight`.
    Total,
    /// `server.max_in_flight_per_ip`.
    PerIp,
}

impl Shed {
    /// Also the metric's label: one of [`crate::metrics::SHED_CAPS`].
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::Total => crate::metrics::SHED_CAPS[0],
            Shed::PerIp => crate::metrics::SHED_CAPS[1],
        }
    }
}

impl Conn {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_active_ms.store(self.now_ms(), Ordering::Release);
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Marks a request in flight until the guard is dropped, or says which
    /// cap it would exceed (then nothing stays counted).
    pub fn begin(self: &Arc<Self>) -> Result<InFlight, Shed> {
        let total = self.total_in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let peer = self.peer_in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
        self.touch();
        let guard = InFlight(self.clone());
        if peer > self.peer_cap {
            return Err(Shed::PerIp);
        }
        if total > self.total_cap {
            return Err(Shed::Total);
        }
        Ok(guard)
    }

    /// When this connection is to be closed for idleness if nothing happens
    /// before: `Ok(deadline)` while idle, `Err(recheck)` while a request is in flight.
    pub fn idle_deadline(
        &self,
        first_request: Duration,
        idle: Duration,
    ) -> Result<Instant, Instant> {
        let limit = if self.served.load(Ordering::Relaxed) {
            idle
        } else {
            first_request
        };
        if !self.is_idle() {
            return Err(Instant::now() + limit);
        }
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::Acquire));
        Ok(self.epoch + last + limit)
    }

    /// Resolves once the registry picked this connection to make room.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// No request in flight right now.
    pub fn idle_now(&self) -> bool {
        self.is_idle()
    }
}

/// A request in flight on its connection.
#[derive(Debug)]
pub struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // Touch first, so whoever sees zero requests also sees the fresh time.
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.peer_in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.total_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One source address's open connections, oldest first (ids grow with
/// time), and its requests in flight.
#[derive(Debug, Default)]
struct Peer {
    conns: BTreeMap<u64, Arc<Conn>>,
    in_flight: Arc<AtomicU32>,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    by_ip: HashMap<IpAddr, Peer>,
    /// (open connections, address), to find the heaviest address.
    by_load: BTreeSet<(usize, IpAddr)>,
    /// Connections in `by_ip`.
    live: usize,
    /// Connections picked to make room whose task has not ended yet.
    closing: usize,
}

impl Registry {
    fn count(&self, ip: IpAddr) -> usize {
        self.by_ip.get(&ip).map_or(0, |p| p.conns.len())
    }

    fn insert(&mut self, conn: Arc<Conn>) {
        let ip = conn.ip;
        let n = self.count(ip);
        self.by_load.remove(&(n, ip));
        self.by_load.insert((n + 1, ip));
        self.by_ip
            .entry(ip)
            .or_default()
            .conns
            .insert(conn.id, conn);
        self.live += 1;
    }

    /// Removes a live connection; false if it was not (any more) registered.
    fn remove(&mut self, ip: IpAddr, id: u64) -> bool {
        let Some(conns) = self.by_ip.get_mut(&ip).map(|p| &mut p.conns) else {
            return false;
        };
        let n = conns.len();
        if conns.remove(&id).is_none() {
            return false;
        }
        self.by_load.remove(&(n, ip));
        if n > 1 {
            self.by_load.insert((n - 1, ip));
        } else {
            self.by_ip.remove(&ip);
        }
        self.live -= 1;
        true
    }

    /// The oldest connection of `ip` with no request in flight.
    fn oldest_idle_of(&self, ip: IpAddr) -> Option<Arc<Conn>> {
        self.by_ip
            .get(&ip)?
            .conns
            .values()
            .find(|c| c.is_idle())
            .cloned()
    }

    /// The oldest idle connection of the address holding the most: a flood
    /// from some addresses does not push out a sender that holds one or two.
    fn oldest_idle_of_heaviest(&self) -> Option<Arc<Conn>> {
        self.by_load
            .iter()
            .rev()
            .find_map(|&(_, ip)| self.oldest_idle_of(ip))
    }

    /// Takes `victim` out of the registry and tells its task to close.
    fn evict(&mut self, victim: &Conn) {
        if self.remove(victim.ip, victim.id) {
            self.closing += 1;
            victim.evict.notify_one();
        }
    }
}

/// Why a connection was closed or refused, for the log.
#[derive(Debug, Clone, Copy)]
enum Cap {
    PerIp,
    Total,
    Closing,
}

impl Cap {
    fn as_str(self) -> &'static str {
        match self {
            Cap::PerIp => "server.max_connections_per_ip",
            Cap::Total => "server.max_connections",
            Cap::Closing => "connections still closing",
        }
    }
}

/// The caps and the registry of open connections.
#[derive(Debug)]
pub struct Limits {
    caps: Caps,
    exempt: Vec<IpNet>,
    pub first_request: Duration,
    pub idle: Duration,
    epoch: Instant,
    registry: Mutex<Registry>,
    in_flight: Arc<AtomicUsize>,
    evicted: AtomicU64,
    refused: AtomicU64,
    shed: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Limits {
    pub fn new(settings: &Settings, caps: Caps, metrics: Arc<Metrics>) -> Limits {
        Limits {
            in_flight: Arc::default(),
            shed: AtomicU64::new(0),
            metrics,
            caps,
            exempt: settings.security.trusted_proxies.clone(),
            first_request: Duration::from_millis(settings.server.first_request_timeout_ms),
            idle: Duration::from_millis(settings.server.idle_timeout_ms),
            epoch: Instant::now(),
            registry: Mutex::default(),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection just accepted from `ip`, closing an idle one
    /// first when a cap is reached; `None` when it must be refused.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Registration> {
        let mut reg = self.lock();
        let open = reg.live + reg.closing;
        let newcomer = reg.count(ip) == 0;
        let headroom = CLOSING_HEADROOM + if newcomer { NEWCOMER_RESERVE } else { 0 };
        if open >= self.caps.total + headroom {
            drop(reg);
            self.refuse(ip, Cap::Closing);
            return None;
        }
        let exempt = self.exempt.iter().any(|n| n.contains(&ip));
        if !exempt && reg.count(ip) >= self.caps.per_ip {
            match reg.oldest_idle_of(ip) {
                Some(victim) => {
                    reg.evict(&victim);
                    self.note_eviction(ip, &victim, Cap::PerIp);
                }
                None => {
                    drop(reg);
                    self.refuse(ip, Cap::PerIp);
                    return None;
                }
            }
        }
        if reg.live >= self.caps.total {
            match reg.oldest_idle_of_heaviest() {
                Some(victim) => {
                    reg.evict(&victim);
                    self.note_eviction(ip, &victim, Cap::Total);
                }
                None => {
                    drop(reg);
                    self.refuse(ip, Cap::Total);
                    return None;
                }
            }
        }
        reg.next_id += 1;
        let peer_in_flight = reg.by_ip.entry(ip).or_default().in_flight.clone();
        let conn = Arc::new(Conn {
            id: reg.next_id,
            ip,
            epoch: self.epoch,
            in_flight: AtomicU32::new(0),
            last_active_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            evict: Notify::new(),
            peer_in_flight,
            peer_cap: if exempt {
                u32::MAX
            } else {
                u32::try_from(self.caps.in_flight_per_ip).unwrap_or(u32::MAX)
            },
            total_in_flight: self.in_flight.clone(),
            total_cap: self.caps.in_flight,
        });
        conn.touch();
        reg.insert(conn.clone());
        Some(Registration {
            limits: self.clone(),
            conn,
        })
    }

    fn note_eviction(&self, ip: IpAddr, victim: &Conn, cap: Cap) {
        self.metrics.connection_evicted();
        tracing::debug!(peer = %ip, victim = %victim.ip, cap = cap.as_str(), "http: closing an idle connection to make room");
        // A flood must not flood the log too: say so at 1, 2, 4, 8… events.
        let n = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                evicted = n,
                cap = cap.as_str(),
                "http: connection limit reached; closing idle connections to make room"
            );
        }
    }

    /// Notes a request answered 503 because of `why`.
    pub fn shed(&self, ip: IpAddr, why: Shed) {
        self.metrics.shed(why.as_str());
        tracing::debug!(peer = %ip, cap = why.as_str(), "http: request shed: answered 503");
        let n = self.shed.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                shed = n,
                cap = why.as_str(),
                "http: too many requests in flight; answering 503 with Retry-After"
            );
        }
    }

    /// The metrics these limits count into (for the request path's panics).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn refuse(&self, ip: IpAddr, cap: Cap) {
        self.metrics.connection_refused();
        tracing::debug!(peer = %ip, cap = cap.as_str(), "http: connection refused: limit reached and none idle");
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                refused = n,
                cap = cap.as_str(),
                "http: connection limit reached with no idle connection; refusing new ones"
            );
        }
    }

    /// Connections open now (live, closing).
    #[cfg(test)]
    fn open(&self) -> (usize, usize) {
        let reg = self.lock();
        (reg.live, reg.closing)
    }
}

/// An admitted connection; dropping it (when its task ends) frees its place.
#[derive(Debug)]
pub struct Registration {
    limits: Arc<Limits>,
    conn: Arc<Conn>,
}

impl Registration {
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut reg = self.limits.lock();
        if !reg.remove(self.conn.ip, self.conn.id) {
            reg.closing = reg.closing.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize, exempt: &[&str]) -> Arc<Limits> {
        let mut s = Settings::default();
        s.security.trusted_proxies = exempt.iter().map(|n| n.parse().unwrap()).collect();
        Arc::new(Limits::new(
            &s,
            Caps {
                total,
                per_ip,
                in_flight: 3,
                in_flight_per_ip: 2,
                nofile: None,
            },
            Arc::default(),
        ))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn the_per_address_cap_closes_that_address_s_oldest_idle_connection() {
        let l = limits(100, 2, &[]);
        let a1 = l.admit(ip("10.0.0.1")).unwrap();
        let a2 = l.admit(ip("10.0.0.1")).unwrap();
        let b1 = l.admit(ip("10.0.0.2")).unwrap();
        let a3 = l.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(l.open(), (3, 1));
        // a1 was told to close; the others were not.
        tokio::time::timeout(Duration::from_millis(10), a1.conn().evicted())
            .await
            .expect("a1 evicted");
        for other in [&a2, &b1, &a3] {
            assert!(
                tokio::time::timeout(Duration::from_millis(10), other.conn().evicted())
                    .await
                    .is_err()
            );
        }
        drop(a1);
        assert_eq!(l.open(), (3, 0));
    }

    #[tokio::test]
    async fn a_full_address_with_every_connection_busy_is_refused() {
        let l = limits(100, 2, &[]);
        let a1 = l.admit(ip("10.0.0.1")).unwrap();
        let a2 = l.admit(ip("10.0.0.1")).unwrap();
        let _r1 = a1.conn().begin().unwrap();
        let _r2 = a2.conn().begin().unwrap();
        assert!(l.admit(ip("10.0.0.1")).is_none());
        assert!(l.admit(ip("10.0.0.2")).is_some());
    }

    #[tokio::test]
    async fn trusted_proxies_are_exempt_from_the_per_address_cap() {
        let l = limits(100, 2, &["10.0.0.0/8"]);
        let held: Vec<_> = (0..10).map(|_| l.admit(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(l.open(), (10, 0));
        drop(held);
        assert_eq!(l.open(), (0, 0));
    }

    #[tokio::test]
    async fn the_total_cap_takes_room_from_the_heaviest_address() {
        let l = limits(4, 100, &[]);
        let light = l.admit(ip("10.0.0.9")).unwrap();
        let heavy: Vec<_> = (0..3).map(|_| l.admit(ip("10.0.0.1")).unwrap()).collect();
        let _new = l.admit(ip("10.0.0.9")).unwrap();
        tokio::time::timeout(Duration::from_millis(10), heavy[0].conn().evicted())
            .await
            .expect("the heavy address's oldest goes");
        assert!(
            tokio::time::timeout(Duration::from_millis(10), light.conn().evicted())
                .await
                .is_err()
        );
        assert_eq!(l.open(), (4, 1));
    }

    #[tokio::test]
    async fn while_evicted_connections_linger_a_new_address_still_gets_in() {
        let l = limits(2, 1000, &[]);
        let mut flood = Vec::new();
        // Each admission past the cap evicts one; the evicted ones never end,
        // as when the runtime is too busy to close them.
        while let Some(r) = l.admit(ip("10.0.0.1")) {
            flood.push(r);
        }
        assert_eq!(l.open(), (2, CLOSING_HEADROOM));
        // The flooding address is refused; one that holds nothing is not.
        assert!(l.admit(ip("10.0.0.1")).is_none());
        let clickbank = l.admit(ip("10.0.0.9")).expect("a newcomer gets in");
        assert!(l.admit(ip("10.0.0.9")).is_none(), "but only its first");
        drop(clickbank);
        // The reserve is bounded: newcomers are refused once it is used up.
        let newcomers: Vec<_> = (1..=255u8)
            .filter_map(|d| l.admit(IpAddr::from([10, 0, 1, d])))
            .collect();
        assert_eq!(newcomers.len(), NEWCOMER_RESERVE);
        assert!(l.admit(ip("10.0.2.1")).is_none());
    }

    #[tokio::test]
    async fn the_idle_deadline_counts_from_the_last_request() {
        let l = limits(4, 4, &[]);
        let c = l.admit(ip("10.0.0.1")).unwrap();
        let (first, idle) = (Duration::from_secs(10), Duration::from_secs(15));
        let fresh = c.conn().idle_deadline(first, idle).unwrap();
        assert!(fresh <= Instant::now() + first);
        let r = c.conn().begin().unwrap();
        assert!(c.conn().idle_deadline(first, idle).is_err(), "busy");
        drop(r);
        let after = c.conn().idle_deadline(first, idle).unwrap();
        assert!(
            after > fresh,
            "idle now counts from the request's end, with the longer limit"
        );
    }

    #[tokio::test]
    async fn requests_past_an_in_flight_cap_are_shed_and_leave_nothing_counted() {
        // in_flight 3 in all, 2 per address.
        let l = limits(100, 100, &["10.9.0.0/16"]);
        let a1 = l.admit(ip("10.0.0.1")).unwrap();
        let a2 = l.admit(ip("10.0.0.1")).unwrap();
        let b = l.admit(ip("10.0.0.2")).unwrap();
        let proxy = l.admit(ip("10.9.0.1")).unwrap();
        let r1 = a1.conn().begin().unwrap();
        // The address's cap counts every connection of that address.
        let r2 = a2.conn().begin().unwrap();
        assert_eq!(a1.conn().begin().unwrap_err(), Shed::PerIp);
        assert!(!a1.conn().idle_now() && a2.conn().begin().is_err());
        let rb = b.conn().begin().unwrap();
        // Three in flight: the total cap sheds another address too, and a
        // trusted proxy (exempt from the per-address cap only).
        assert_eq!(proxy.conn().begin().unwrap_err(), Shed::Total);
        drop((r1, rb));
        let p1 = proxy.conn().begin().unwrap();
        let p2 = proxy.conn().begin().unwrap();
        assert_eq!(b.conn().begin().unwrap_err(), Shed::Total);
        drop((r2, p1, p2));
        // Nothing leaked: every connection takes requests again.
        assert!(a1.conn().idle_now() && a2.conn().idle_now() && b.conn().idle_now());
        let _again = [a1.conn().begin().unwrap(), a2.conn().begin().unwrap()];
        assert!(b.conn().begin().is_ok());
    }
}
