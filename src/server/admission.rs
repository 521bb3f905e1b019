//! Who gets in, and how much each client address may ask: handshakes in
//! progress, connection slots, connections per address and the address's
//! flood-control budget.
//!
//! A TCP connection first takes one of `--max-handshakes` places (none left:
//! it is closed at once) and counts against its address's
//! `--max-per-ip`. Only a handshake that succeeds takes one of
//! `--max-connections` slots, so sockets that never finish their handshake
//! cost a bounded number of places for at most `--handshake-timeout`, and
//! never keep real users out of the chat.
//!
//! An address is an IPv4 address or an IPv6 /64 (what one home or one
//! machine is usually given). Its budget (`--rate-per-ip`) is shared by all
//! its connections and outlives them until it has refilled, so reconnecting
//! does not reset it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::lock;
use crate::limit::TokenBucket;

/// Arrivals between sweeps of addresses that have no connection left.
const SWEEP_EVERY: u32 = 1024;
/// One address may hold at most this fraction of `--max-handshakes`
/// (1/8: 128 of the default 1024), so sockets that never finish their
/// handshake, all from one address, leave places for everyone else.
const HANDSHAKE_SHARE: usize = 8;

/// The server's places: handshakes, slots and per-address counts.
#[derive(Debug)]
pub struct Admission {
    handshakes: Arc<Semaphore>,
    max_handshakes: usize,
    slots: Arc<Semaphore>,
    max_connections: usize,
    max_per_ip: usize,
    /// A full budget as each address starts with (`None`: no budget).
    budget: Option<TokenBucket>,
    addresses: Mutex<Addresses>,
}

/// What is known of each client address.
#[derive(Debug, Default)]
struct Addresses {
    by_key: HashMap<IpAddr, Address>,
    arrivals: u32,
}

/// One client address: its open connections and its flood budget.
#[derive(Debug, Default)]
struct Address {
    connections: usize,
    /// Of those, the ones still in their handshake.
    handshake: usize,
    budget: Option<TokenBucket>,
    /// New connections allowed: `--max-per-ip` per minute, in bursts of a
    /// quarter more (room to reconnect at the cap), so an address cannot
    /// churn through connections either (each costs the server a session's
    /// setup and teardown).
    arrivals: Option<TokenBucket>,
}

impl Address {
    /// Whether forgetting it would change nothing: no connection, and
    /// budgets as full as new ones.
    fn forgettable(&mut self, now: Instant) -> bool {
        self.connections == 0
            && self.budget.as_mut().is_none_or(|b| b.full_at(now))
            && self.arrivals.as_mut().is_none_or(|b| b.full_at(now))
    }
}

/// The key an address is counted under: IPv4 as is (IPv4-mapped IPv6 too),
/// IPv6 by its /64.
fn address_key(ip: IpAddr) -> IpAddr {
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

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every `--max-connections` slot is taken.
    Server,
    /// The client's address has `--max-per-ip` connections.
    Address,
}

impl Admission {
    /// Places for `max_handshakes` handshakes and `max_connections`
    /// connections, at most `max_per_ip` per address (0: no cap).
    pub fn new(max_handshakes: usize, max_connections: usize, max_per_ip: usize) -> Self {
        Self {
            handshakes: Arc::new(Semaphore::new(max_handshakes)),
            max_handshakes,
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            max_per_ip,
            budget: None,
            addresses: Mutex::new(Addresses::default()),
        }
    }

    /// Gives each address a budget of `rate` requests per 10 s, `burst` at
    /// once, over all its connections (0: none).
    #[must_use]
    pub fn with_budget(mut self, rate: u32, burst: u32) -> Self {
        self.budget = TokenBucket::new(rate, burst);
        self
    }

    /// How many connections hold a slot.
    pub fn connections(&self) -> usize {
        self.max_connections - self.slots.available_permits()
    }

    /// Takes one request from `ip`'s budget; `false` when it is spent.
    pub fn spend(&self, ip: IpAddr) -> bool {
        let Some(full) = &self.budget else {
            return true;
        };
        let mut addresses = lock(&self.addresses);
        let address = addresses.by_key.entry(address_key(ip)).or_default();
        address
            .budget
            .get_or_insert_with(|| full.clone())
            .try_take()
    }

    /// A new TCP connection from `ip`: its handshake place and its count
    /// against the address, or `None` (close it at once) when every
    /// handshake place is taken, its address already holds a
    /// [`HANDSHAKE_SHARE`] of them, or has opened more than `--max-per-ip`
    /// connections per minute (in bursts of a quarter more). An address
    /// that holds `--max-per-ip` connections is let through to hear 503
    /// rather than be closed without a word.
    pub fn arrive(self: &Arc<Self>, ip: IpAddr) -> Option<Arriving> {
        let share = (self.max_handshakes / HANDSHAKE_SHARE).max(1);
        let mut addresses = lock(&self.addresses);
        addresses.arrivals = addresses.arrivals.wrapping_add(1);
        if addresses.arrivals.is_multiple_of(SWEEP_EVERY) {
            let now = Instant::now();
            addresses.by_key.retain(|_, a| !a.forgettable(now));
        }
        let max_per_ip = self.max_per_ip;
        let address = addresses.by_key.entry(address_key(ip)).or_default();
        if address.handshake >= share {
            return None;
        }
        if max_per_ip > 0 && address.connections < max_per_ip {
            if address.arrivals.is_none() {
                let per_minute = u32::try_from(max_per_ip).unwrap_or(u32::MAX);
                let burst = per_minute.saturating_add((per_minute / 4).max(1));
                address.arrivals = TokenBucket::per_minute(per_minute, burst);
            }
            if address.arrivals.as_mut().is_some_and(|b| !b.try_take()) {
                return None;
            }
        }
        let permit = self.handshakes.clone().try_acquire_owned().ok()?;
        address.connections += 1;
        address.handshake += 1;
        let crowded = self.max_per_ip > 0 && address.connections > self.max_per_ip;
        drop(addresses);
        Some(Arriving {
            handshake: Some(HandshakePlace {
                _permit: permit,
                admission: self.clone(),
                ip,
            }),
            presence: AddressCount {
                admission: self.clone(),
                ip,
            },
            crowded,
        })
    }

    /// Connections open from `ip`'s address.
    #[cfg(test)]
    fn open_from(&self, ip: IpAddr) -> usize {
        lock(&self.addresses)
            .by_key
            .get(&address_key(ip))
            .map_or(0, |a| a.connections)
    }

    /// Addresses remembered.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        lock(&self.addresses).by_key.len()
    }
}

/// One of `--max-handshakes` places, counted against its address until
/// dropped.
#[derive(Debug)]
struct HandshakePlace {
    _permit: OwnedSemaphorePermit,
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for HandshakePlace {
    fn drop(&mut self) {
        let mut addresses = lock(&self.admission.addresses);
        if let Some(address) = addresses.by_key.get_mut(&address_key(self.ip)) {
            address.handshake -= 1;
        }
    }
}

/// A connection in its handshake.
#[derive(Debug)]
pub struct Arriving {
    handshake: Option<HandshakePlace>,
    presence: AddressCount,
    crowded: bool,
}

impl Arriving {
    /// The handshake succeeded: take a connection slot, giving back the
    /// handshake place.
    ///
    /// # Errors
    /// [`Full`] when the server or the client's address has no room left.
    pub fn admit(mut self) -> Result<Admitted, Full> {
        self.handshake = None;
        if self.crowded {
            return Err(Full::Address);
        }
        let slot = self
            .presence
            .admission
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Full::Server)?;
        Ok(Admitted {
            _slot: slot,
            _presence: self.presence,
        })
    }
}

/// An open connection's slot; dropping it frees the slot and the
/// address's count.
#[derive(Debug)]
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    _presence: AddressCount,
}

/// One connection counted against its address until dropped.
#[derive(Debug)]
struct AddressCount {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for AddressCount {
    fn drop(&mut self) {
        let mut addresses = lock(&self.admission.addresses);
        let key = address_key(self.ip);
        if let Some(address) = addresses.by_key.get_mut(&key) {
            address.connections -= 1;
            if address.forgettable(Instant::now()) {
                addresses.by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const AWAY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    #[test]
    fn handshakes_are_capped_and_given_back() {
        let admission = Arc::new(Admission::new(2, 10, 0));
        let a = admission.arrive(HOME).expect("first");
        let _b = admission.arrive(AWAY).expect("second");
        let third: IpAddr = "10.0.0.3".parse().expect("ip");
        assert!(admission.arrive(third).is_none());
        let _a = a.admit().expect("admitted");
        assert!(admission.arrive(third).is_some());
    }

    #[test]
    fn one_address_holds_an_eighth_of_the_handshake_places() {
        let admission = Arc::new(Admission::new(16, 100, 0));
        let held: Vec<_> = (0..2)
            .map(|_| admission.arrive(HOME).expect("place"))
            .collect();
        assert!(admission.arrive(HOME).is_none());
        let other = admission.arrive(AWAY).expect("others still get in");
        // A finished handshake gives its place back.
        let mut held = held.into_iter();
        let _in = held.next().expect("one").admit().expect("admitted");
        assert!(admission.arrive(HOME).is_some());
        drop((held, other));
    }

    #[test]
    fn an_address_cannot_churn_through_connections() {
        let admission = Arc::new(Admission::new(100, 100, 3));
        for _ in 0..4 {
            drop(admission.arrive(HOME).expect("within the burst"));
        }
        // Three held at most, three opened per minute in bursts of four:
        // closing them does not make room for more right away.
        assert!(admission.arrive(HOME).is_none());
        assert!(admission.arrive(AWAY).is_some());
    }

    #[test]
    fn slots_are_taken_only_by_finished_handshakes() {
        let admission = Arc::new(Admission::new(10, 1, 0));
        let waiting: Vec<_> = (0..5).map(|_| admission.arrive(HOME)).collect();
        let first = admission.arrive(AWAY).expect("arrives").admit();
        assert!(first.is_ok());
        let second = admission.arrive(AWAY).expect("arrives").admit();
        assert_eq!(second.err(), Some(Full::Server));
        drop(first);
        assert!(admission.arrive(AWAY).expect("arrives").admit().is_ok());
        drop(waiting);
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share() {
        let admission = Arc::new(Admission::new(10, 10, 2));
        let a = admission.arrive(HOME).expect("a").admit().expect("a in");
        let _b = admission.arrive(HOME).expect("b").admit().expect("b in");
        let c = admission.arrive(HOME).expect("c").admit();
        assert_eq!(c.err(), Some(Full::Address));
        assert!(admission.arrive(AWAY).expect("other").admit().is_ok());
        assert_eq!(admission.open_from(HOME), 2);
        drop(a);
        assert_eq!(admission.open_from(HOME), 1);
        assert!(admission.arrive(HOME).expect("again").admit().is_ok());
        assert_eq!(admission.open_from(AWAY), 0);
    }

    #[test]
    fn an_ipv6_address_is_counted_by_its_64() {
        let admission = Arc::new(Admission::new(10, 10, 1));
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        let _in = admission.arrive(one).expect("one").admit().expect("in");
        assert_eq!(
            admission.arrive(other).expect("other").admit().err(),
            Some(Full::Address)
        );
        assert!(admission.arrive(elsewhere).expect("else").admit().is_ok());
    }

    #[test]
    fn the_budget_is_shared_and_outlives_the_connections() {
        let admission = Arc::new(Admission::new(10, 10, 0).with_budget(20, 3));
        let first = admission.arrive(HOME).expect("a").admit().expect("in");
        let second = admission.arrive(HOME).expect("b").admit().expect("in");
        assert!(admission.spend(HOME));
        assert!(admission.spend(HOME));
        assert!(admission.spend(HOME));
        assert!(!admission.spend(HOME));
        assert!(admission.spend(AWAY));
        // Reconnecting starts with the budget where it was.
        drop((first, second));
        let _again = admission.arrive(HOME).expect("c").admit().expect("in");
        assert!(!admission.spend(HOME));
    }

    #[test]
    fn addresses_without_connections_are_forgotten_once_their_budget_is_whole() {
        let admission = Arc::new(Admission::new(10, 10, 0).with_budget(20, 3));
        drop(admission.arrive(AWAY).expect("away").admit().expect("in"));
        assert_eq!(admission.addresses(), 0);
        let home = admission.arrive(HOME).expect("home").admit().expect("in");
        assert!(admission.spend(HOME));
        drop(home);
        // Its budget is not whole yet: it is remembered.
        assert_eq!(admission.addresses(), 1);
    }
}
