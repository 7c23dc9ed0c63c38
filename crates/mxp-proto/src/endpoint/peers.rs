//! Connections per source address and per client key, so that one host,
//! or one key anyone can generate, cannot take every connection slot.

use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};

use super::ConnectionHandle;
use crate::crypto::PublicKey;

/// Live server connections counted by the address they were accepted from
/// and the client key they authenticated with.
#[derive(Debug, Default)]
pub(super) struct PeerCounts {
    by_address: HashMap<IpAddr, usize>,
    by_key: HashMap<PublicKey, usize>,
    /// What each connection was counted under: a migrated connection still
    /// counts where it started, so the counts never drift.
    counted: HashMap<ConnectionHandle, (IpAddr, PublicKey)>,
}

impl PeerCounts {
    pub(super) fn new() -> Self {
        PeerCounts {
            by_address: HashMap::new(),
            by_key: HashMap::new(),
            counted: HashMap::new(),
        }
    }

    /// Connections accepted from `ip` that are still open.
    pub(super) fn at_address(&self, ip: IpAddr) -> usize {
        self.by_address.get(&ip).copied().unwrap_or(0)
    }

    /// Connections authenticated with `key` that are still open.
    pub(super) fn with_key(&self, key: &PublicKey) -> usize {
        self.by_key.get(key).copied().unwrap_or(0)
    }

    pub(super) fn add(&mut self, h: ConnectionHandle, ip: IpAddr, key: PublicKey) {
        *self.by_address.entry(ip).or_default() += 1;
        *self.by_key.entry(key).or_default() += 1;
        self.counted.insert(h, (ip, key));
    }

    pub(super) fn remove(&mut self, h: ConnectionHandle) {
        let Some((ip, key)) = self.counted.remove(&h) else {
            return;
        };
        decrement(&mut self.by_address, ip);
        decrement(&mut self.by_key, key);
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;

    #[test]
    fn counts_follow_connections_and_forget_empty_entries() {
        let mut c = PeerCounts::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let key = Keypair::generate().public();
        c.add(ConnectionHandle(1), ip, key);
        c.add(ConnectionHandle(2), ip, key);
        assert_eq!((c.at_address(ip), c.with_key(&key)), (2, 2));
        c.remove(ConnectionHandle(1));
        c.remove(ConnectionHandle(1));
        assert_eq!((c.at_address(ip), c.with_key(&key)), (1, 1));
        c.remove(ConnectionHandle(2));
        assert!(c.by_address.is_empty() && c.by_key.is_empty());
    }
}
