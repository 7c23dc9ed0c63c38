//! Who has been asking for handshake work lately, per source address and
//! per network prefix (/24 for IPv4, /56 for IPv6), so the handshake queue
//! can give each a fair share: whoever asked least goes first, and one
//! sender with many ports or addresses cannot crowd out a newcomer.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

/// How long a request counts: usage is this period's count plus the last
/// period's.
const PERIOD: Duration = Duration::from_secs(1);
/// Sources remembered per period; beyond it, new sources count as unseen
/// (the table stays bounded under a flood of addresses).
const MAX_SOURCES: usize = 1 << 16;

/// A source's claim on the handshake queue: (its prefix's usage, its own
/// usage). Lower is served first.
pub type Share = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Address(SocketAddr),
    Prefix([u8; 8]),
}

fn prefix(addr: &SocketAddr) -> Source {
    let mut p = [0u8; 8];
    match addr.ip() {
        IpAddr::V4(ip) => {
            p[..3].copy_from_slice(&ip.octets()[..3]);
            p[7] = 4;
        }
        IpAddr::V6(ip) => p[..7].copy_from_slice(&ip.octets()[..7]),
    }
    Source::Prefix(p)
}

/// Recent requests per source address and prefix (see the module doc).
#[derive(Debug)]
pub struct SourceShares {
    current: HashMap<Source, u32>,
    previous: HashMap<Source, u32>,
    period_start: Instant,
}

impl SourceShares {
    /// An empty table.
    pub fn new(now: Instant) -> Self {
        SourceShares {
            current: HashMap::new(),
            previous: HashMap::new(),
            period_start: now,
        }
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.period_start);
        if elapsed < PERIOD {
            return;
        }
        self.previous = std::mem::take(&mut self.current);
        if elapsed >= 2 * PERIOD {
            self.previous.clear();
        }
        self.period_start = now;
    }

    fn usage(&self, s: &Source) -> u32 {
        let of = |m: &HashMap<Source, u32>| m.get(s).copied().unwrap_or(0);
        of(&self.current).saturating_add(of(&self.previous))
    }

    /// What `addr` has asked for lately.
    pub fn share(&mut self, now: Instant, addr: &SocketAddr) -> Share {
        self.roll(now);
        (
            self.usage(&prefix(addr)),
            self.usage(&Source::Address(*addr)),
        )
    }

    /// Counts one request from `addr`.
    pub fn charge(&mut self, now: Instant, addr: &SocketAddr) {
        self.roll(now);
        for s in [prefix(addr), Source::Address(*addr)] {
            if let Some(n) = self.current.get_mut(&s) {
                *n = n.saturating_add(1);
            } else if self.current.len() < MAX_SOURCES {
                self.current.insert(s, 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn usage_is_counted_per_address_and_per_prefix() {
        let now = Instant::now();
        let mut s = SourceShares::new(now);
        for port in 0..10 {
            s.charge(now, &addr(&format!("192.0.2.7:{}", 1000 + port)));
        }
        assert_eq!(s.share(now, &addr("192.0.2.7:1000")), (10, 1));
        assert_eq!(s.share(now, &addr("192.0.2.200:5")), (10, 0), "same /24");
        assert_eq!(s.share(now, &addr("192.0.3.7:1000")), (0, 0));
        s.charge(now, &addr("[2001:db8:0:ab00::1]:9"));
        assert_eq!(
            s.share(now, &addr("[2001:db8:0:abff::2]:9")),
            (1, 0),
            "same /56"
        );
        assert_eq!(s.share(now, &addr("[2001:db8:0:ac00::1]:9")), (0, 0));
    }

    #[test]
    fn usage_fades_after_two_periods() {
        let now = Instant::now();
        let mut s = SourceShares::new(now);
        let a = addr("10.0.0.1:1");
        s.charge(now, &a);
        assert_eq!(
            s.share(now + PERIOD, &a),
            (1, 1),
            "last period still counts"
        );
        assert_eq!(s.share(now + 2 * PERIOD + PERIOD / 2, &a), (0, 0));
    }

    #[test]
    fn the_table_is_bounded_under_a_flood_of_addresses() {
        let now = Instant::now();
        let mut s = SourceShares::new(now);
        for i in 0..200_000u32 {
            let ip = std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761));
            s.charge(now, &SocketAddr::from((ip, 1)));
        }
        assert!(s.current.len() <= MAX_SOURCES);
    }
}
