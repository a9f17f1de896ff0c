//! Bounds per client address: how many connections one address may hold open, and how
//! many it may open per second. Both are off unless configured: behind a proxy or a
//! NAT every client shares one address.
//!
//! IPv6 clients are counted by their /64 network, which one host can fill with
//! addresses of its own; IPv4-mapped IPv6 addresses count as the IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The bounds, as configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerIpLimits {
    /// Connections one address may hold open at once.
    pub max_connections: Option<u32>,
    /// Connections one address may open per second (a burst of as many, refilled
    /// evenly over the second).
    pub max_rate: Option<u32>,
}

impl PerIpLimits {
    /// Whether any bound is set.
    pub fn any(&self) -> bool {
        self.max_connections.is_some() || self.max_rate.is_some()
    }
}

/// Why an address may not open another connection now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It holds `max_connections` open.
    TooMany,
    /// It opened `max_rate` in the last second.
    TooFast,
}

struct Entry {
    open: u32,
    /// Connections it may still open now (at most `max_rate`).
    tokens: f64,
    /// When `tokens` was last refilled.
    at: Instant,
}

/// The addresses with connections open or recently opened.
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
                if entry.open == 0 && per_ip.limits.max_rate.is_none() {
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
        let rate = self.limits.max_rate.map(f64::from);
        let mut table = self.lock();
        if table.entries.len() >= table.sweep_at {
            table.sweep(rate, now);
        }
        let entry = table.entries.entry(key).or_insert(Entry {
            open: 0,
            tokens: rate.unwrap_or(0.0),
            at: now,
        });
        if self.limits.max_connections.is_some_and(|max| entry.open >= max) {
            return Err(Refusal::TooMany);
        }
        if let Some(rate) = rate {
            entry.refill(rate, now);
            if entry.tokens < 1.0 {
                return Err(Refusal::TooFast);
            }
            entry.tokens -= 1.0;
        }
        entry.open += 1;
        Ok(Admission {
            per_ip: Some((self.clone(), key)),
        })
    }

    /// How many addresses are remembered (for tests: the table stays bounded).
    pub fn addresses(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Entry {
    fn refill(&mut self, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
    }
}

impl Table {
    /// Forgets the addresses with nothing open whose rate allowance is whole again:
    /// they are as if never seen.
    fn sweep(&mut self, rate: Option<f64>, now: Instant) {
        self.entries.retain(|_, entry| {
            if let Some(rate) = rate {
                entry.refill(rate, now);
            }
            entry.open > 0 || rate.is_some_and(|rate| entry.tokens < rate)
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
        });
        drop(counted.admit(ip("10.0.0.1"), start).unwrap());
        assert_eq!(counted.addresses(), 0);
    }
}
