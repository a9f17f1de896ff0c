//! Bounds per client address: how many connections one address may hold open, how many
//! it may open per second, and how many of its calls may run past a plugin's CPU
//! deadline per minute. All are off unless configured: behind a reverse proxy or a NAT
//! every client shares one address, and a refused address is refused everything, its
//! health checks too.
//!
//! IPv6 clients are counted by their /64 network, which one host can fill with
//! addresses of its own; IPv4-mapped IPv6 addresses count as the IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The bounds, as configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerIpLimits {
    /// Connections one address may hold open at once.
    pub max_connections: Option<u32>,
    /// Connections one address may open per second (a burst of as many, refilled
    /// evenly over the second).
    pub max_rate: Option<u32>,
    /// Calls of one address's connections that may run past a plugin's CPU deadline
    /// per minute (a burst of as many, refilled evenly over the minute); past it, the
    /// address's handshakes are refused until one is refilled.
    pub max_overruns: Option<u32>,
}

impl PerIpLimits {
    /// Whether any bound is set.
    pub fn any(&self) -> bool {
        self.counts_connections() || self.max_overruns.is_some()
    }

    /// Whether an address's connections are counted (as they open, and close).
    fn counts_connections(&self) -> bool {
        self.max_connections.is_some() || self.max_rate.is_some()
    }

    /// The allowances of an address not seen before.
    fn fresh(&self, now: Instant) -> Entry {
        Entry {
            open: 0,
            opening: Bucket::full(self.max_rate, now),
            overruns: Bucket::full(self.max_overruns, now),
        }
    }
}

/// Why an address may not open another connection now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It holds `max_connections` open.
    TooMany,
    /// It opened `max_rate` in the last second.
    TooFast,
    /// Its calls ran past the deadline `max_overruns` times in the last minute; one
    /// more is allowed after this long.
    Overran(Duration),
}

impl Refusal {
    /// When the client may try again, for `Retry-After`: whole seconds, at least one.
    pub fn retry_after_s(&self) -> u64 {
        match self {
            Refusal::TooMany | Refusal::TooFast => 1,
            Refusal::Overran(wait) => wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
}

/// An allowance of `per_period` events per period, refilled evenly.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Events it may still take now (at most the bound).
    tokens: f64,
    /// When `tokens` was last refilled.
    at: Instant,
}

impl Bucket {
    /// A whole allowance of `bound` (none if there is no bound).
    fn full(bound: Option<u32>, now: Instant) -> Self {
        Self {
            tokens: bound.map_or(0.0, f64::from),
            at: now,
        }
    }

    /// Adds what `period` refills `bound` of, since the last refill (never going back
    /// in time: an earlier `now` adds nothing).
    fn refill(&mut self, bound: u32, period: Duration, now: Instant) {
        if now <= self.at {
            return;
        }
        let bound = f64::from(bound);
        let elapsed = (now - self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * bound / period.as_secs_f64()).min(bound);
        self.at = now;
    }

    /// Whether the whole allowance is there (the address is as if never seen).
    fn is_full(&self, bound: u32) -> bool {
        self.tokens >= f64::from(bound)
    }

    /// How long until one event is allowed again.
    fn wait_for_one(&self, bound: u32, period: Duration) -> Duration {
        period.mul_f64(((1.0 - self.tokens) / f64::from(bound)).max(0.0))
    }
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

struct Entry {
    open: u32,
    /// Against `max_rate`, per second.
    opening: Bucket,
    /// Against `max_overruns`, per minute.
    overruns: Bucket,
}

impl Entry {
    /// Refills both allowances up to `now`.
    fn refill(&mut self, limits: &PerIpLimits, now: Instant) {
        if let Some(rate) = limits.max_rate {
            self.opening.refill(rate, SECOND, now);
        }
        if let Some(overruns) = limits.max_overruns {
            self.overruns.refill(overruns, MINUTE, now);
        }
    }

    /// Nothing open and every allowance whole (as last refilled): it can be forgotten.
    fn is_idle(&self, limits: &PerIpLimits) -> bool {
        self.open == 0
            && limits.max_rate.is_none_or(|rate| self.opening.is_full(rate))
            && limits
                .max_overruns
                .is_none_or(|overruns| self.overruns.is_full(overruns))
    }
}

/// The addresses with connections open or recently opened, or whose calls overran.
pub struct PerIp {
    limits: PerIpLimits,
    table: Mutex<Table>,
}

struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// The table is swept of idle entries when it grows past this.
    sweep_at: usize,
}

/// A connection counted against its address until dropped.
pub struct Admission {
    per_ip: Option<(Arc<PerIp>, IpAddr)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((per_ip, key)) = self.per_ip.take() {
            let mut table = per_ip.lock();
            if let Some(entry) = table.entries.get_mut(&key) {
                entry.open = entry.open.saturating_sub(1);
                if entry.is_idle(&per_ip.limits) {
                    table.entries.remove(&key);
                }
            }
        }
    }
}

/// The address a client is counted by: IPv4 as it is, IPv6 by its /64.
fn key_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

impl PerIp {
    /// Bounds `limits`, with no address seen yet.
    pub fn new(limits: PerIpLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            table: Mutex::new(Table {
                entries: HashMap::new(),
                sweep_at: 1024,
            }),
        })
    }

    /// Counts a new connection from `ip` at `now`, unless that breaks a bound.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Admission, Refusal> {
        if !self.limits.any() {
            return Ok(Admission { per_ip: None });
        }
        let key = key_of(ip);
        let limits = &self.limits;
        let mut table = self.lock();
        if table.entries.len() >= table.sweep_at {
            table.sweep(limits, now);
        }
        if let Some(overruns) = limits.max_overruns
            && let Some(entry) = table.entries.get_mut(&key)
        {
            entry.overruns.refill(overruns, MINUTE, now);
            if entry.overruns.tokens < 1.0 {
                return Err(Refusal::Overran(entry.overruns.wait_for_one(overruns, MINUTE)));
            }
        }
        if !limits.counts_connections() {
            return Ok(Admission { per_ip: None });
        }
        let entry = table.entries.entry(key).or_insert_with(|| limits.fresh(now));
        if limits.max_connections.is_some_and(|max| entry.open >= max) {
            return Err(Refusal::TooMany);
        }
        if let Some(rate) = limits.max_rate {
            entry.opening.refill(rate, SECOND, now);
            if entry.opening.tokens < 1.0 {
                return Err(Refusal::TooFast);
            }
            entry.opening.tokens -= 1.0;
        }
        entry.open += 1;
        Ok(Admission {
            per_ip: Some((self.clone(), key)),
        })
    }

    /// A call of a connection from `ip` ran past a plugin's CPU deadline at `now`:
    /// counted against [`PerIpLimits::max_overruns`].
    pub fn overran(&self, ip: IpAddr, now: Instant) {
        let Some(overruns) = self.limits.max_overruns else {
            return;
        };
        let limits = &self.limits;
        let mut table = self.lock();
        if table.entries.len() >= table.sweep_at {
            table.sweep(limits, now);
        }
        let entry = table.entries.entry(key_of(ip)).or_insert_with(|| limits.fresh(now));
        entry.overruns.refill(overruns, MINUTE, now);
        // Below zero is a debt, up to a minute's worth: the connections an address opened
        // while it had budget left cannot each overrun for free.
        entry.overruns.tokens = (entry.overruns.tokens - 1.0).max(-f64::from(overruns));
    }

    /// How many addresses are remembered (for tests: the table stays bounded).
    pub fn addresses(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Table {
    /// Forgets the addresses with nothing open whose allowances are whole again: they
    /// are as if never seen.
    fn sweep(&mut self, limits: &PerIpLimits, now: Instant) {
        self.entries.retain(|_, entry| {
            entry.refill(limits, now);
            !entry.is_idle(limits)
        });
        self.sweep_at = (2 * self.entries.len()).max(1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn open_connections_are_bounded_per_address() {
        let per_ip = PerIp::new(PerIpLimits {
            max_connections: Some(2),
            max_rate: None,
            ..PerIpLimits::default()
        });
        let now = Instant::now();
        let a = per_ip.admit(ip("10.0.0.1"), now).unwrap();
        let _b = per_ip.admit(ip("10.0.0.1"), now).unwrap();
        assert_eq!(per_ip.admit(ip("10.0.0.1"), now).err(), Some(Refusal::TooMany));
        // Another address is counted apart, and the same one as IPv4-mapped IPv6 is not.
        let _c = per_ip.admit(ip("10.0.0.2"), now).unwrap();
        assert_eq!(per_ip.admit(ip("::ffff:10.0.0.1"), now).err(), Some(Refusal::TooMany));
        drop(a);
        let _d = per_ip.admit(ip("10.0.0.1"), now).unwrap();
    }

    #[test]
    fn ipv6_counts_by_its_64_bit_network() {
        let per_ip = PerIp::new(PerIpLimits {
            max_connections: Some(1),
            max_rate: None,
            ..PerIpLimits::default()
        });
        let now = Instant::now();
        let _a = per_ip.admit(ip("2001:db8:1:2::1"), now).unwrap();
        assert_eq!(
            per_ip.admit(ip("2001:db8:1:2:ffff::9"), now).err(),
            Some(Refusal::TooMany)
        );
        let _b = per_ip.admit(ip("2001:db8:1:3::1"), now).unwrap();
    }

    #[test]
    fn new_connections_are_bounded_per_second_and_refill() {
        let per_ip = PerIp::new(PerIpLimits {
            max_connections: None,
            max_rate: Some(10),
            ..PerIpLimits::default()
        });
        let start = Instant::now();
        let admitted: Vec<_> = (0..10).map(|_| per_ip.admit(ip("10.0.0.1"), start).unwrap()).collect();
        assert_eq!(per_ip.admit(ip("10.0.0.1"), start).err(), Some(Refusal::TooFast));
        drop(admitted);
        // Closing does not give the allowance back; time does, a tenth of a second each.
        assert_eq!(per_ip.admit(ip("10.0.0.1"), start).err(), Some(Refusal::TooFast));
        let later = start + Duration::from_millis(250);
        assert!(per_ip.admit(ip("10.0.0.1"), later).is_ok());
        assert!(per_ip.admit(ip("10.0.0.1"), later).is_ok());
        assert_eq!(per_ip.admit(ip("10.0.0.1"), later).err(), Some(Refusal::TooFast));
    }

    #[test]
    fn the_table_forgets_idle_addresses() {
        let per_ip = PerIp::new(PerIpLimits {
            max_connections: Some(5),
            max_rate: Some(5),
            ..PerIpLimits::default()
        });
        let start = Instant::now();
        for n in 0..5000u32 {
            drop(per_ip.admit(IpAddr::from(n.to_be_bytes()), start).unwrap());
        }
        // Each has used its allowance: none is forgotten yet.
        assert_eq!(per_ip.addresses(), 5000);
        // Once their allowance is whole again, the next sweep (as the table grows)
        // forgets them; the newer ones stay.
        let later = start + Duration::from_secs(2);
        for n in 0..10_000u32 {
            drop(
                per_ip
                    .admit(IpAddr::from((n + 1_000_000).to_be_bytes()), later)
                    .unwrap(),
            );
        }
        assert_eq!(per_ip.addresses(), 10_000);
        // Without a rate, an address is forgotten as soon as it has nothing open.
        let counted = PerIp::new(PerIpLimits {
            max_connections: Some(1),
            max_rate: None,
            ..PerIpLimits::default()
        });
        drop(counted.admit(ip("10.0.0.1"), start).unwrap());
        assert_eq!(counted.addresses(), 0);
    }

    #[test]
    fn an_address_whose_calls_keep_overrunning_is_refused_until_the_minute_refills() {
        let per_ip = PerIp::new(PerIpLimits {
            max_overruns: Some(3),
            ..PerIpLimits::default()
        });
        let start = Instant::now();
        // Counting overruns alone keeps no entry for an address that has none.
        drop(per_ip.admit(ip("10.0.0.1"), start).unwrap());
        assert_eq!(per_ip.addresses(), 0);
        for _ in 0..3 {
            assert!(per_ip.admit(ip("10.0.0.1"), start).is_ok());
            per_ip.overran(ip("10.0.0.1"), start);
        }
        // Refused for the 20 s that refill one overrun; another address is not.
        assert_eq!(
            per_ip.admit(ip("10.0.0.1"), start).err(),
            Some(Refusal::Overran(Duration::from_secs(20)))
        );
        assert_eq!(Refusal::Overran(Duration::from_millis(19_001)).retry_after_s(), 20);
        assert!(per_ip.admit(ip("10.0.0.2"), start).is_ok());
        // The same /64, or the address mapped into IPv6, is the same client.
        per_ip.overran(ip("2001:db8::1"), start);
        per_ip.overran(ip("2001:db8::1"), start);
        per_ip.overran(ip("2001:db8::2"), start);
        assert!(per_ip.admit(ip("2001:db8::3"), start).is_err());
        assert!(per_ip.admit(ip("::ffff:10.0.0.1"), start).is_err());
        // Connections opened while the budget lasted: each of their overruns is owed, up
        // to a minute's worth (three owed, and one to earn: 80 s).
        let opened: Vec<_> = (0..6).map(|_| per_ip.admit(ip("10.0.0.9"), start).unwrap()).collect();
        for _ in &opened {
            per_ip.overran(ip("10.0.0.9"), start);
        }
        assert_eq!(
            per_ip.admit(ip("10.0.0.9"), start).err(),
            Some(Refusal::Overran(Duration::from_secs(80)))
        );
        let later = start + Duration::from_secs(20);
        assert!(per_ip.admit(ip("10.0.0.1"), later).is_ok());
        per_ip.overran(ip("10.0.0.1"), later);
        assert!(per_ip.admit(ip("10.0.0.1"), later).is_err());
        // Once the whole minute has refilled, the address is forgotten at the next sweep.
        let much_later = later + 2 * MINUTE;
        for n in 0..2000u32 {
            per_ip.overran(IpAddr::from((n + 1_000_000).to_be_bytes()), much_later);
        }
        assert_eq!(per_ip.addresses(), 2000);
    }

    #[test]
    fn overruns_and_connection_bounds_count_apart() {
        let per_ip = PerIp::new(PerIpLimits {
            max_connections: Some(1),
            max_overruns: Some(1),
            ..PerIpLimits::default()
        });
        let now = Instant::now();
        let open = per_ip.admit(ip("10.0.0.1"), now).unwrap();
        assert_eq!(per_ip.admit(ip("10.0.0.1"), now).err(), Some(Refusal::TooMany));
        per_ip.overran(ip("10.0.0.1"), now);
        drop(open);
        // Closed, but its overrun is remembered.
        assert_eq!(per_ip.addresses(), 1);
        assert!(matches!(per_ip.admit(ip("10.0.0.1"), now), Err(Refusal::Overran(_))));
    }
}
