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
//! An address is an IPv4 /24 or an IPv6 /48 (`--ip-prefix-v4`,
//! `--ip-prefix-v6`): one attacker rarely has addresses in many such
//! networks. Its budget (`--rate-per-ip`) is shared by all its connections
//! and outlives them until it has refilled, so reconnecting does not reset it.
//!
//! When every handshake place is taken, a newcomer takes the place of the
//! oldest handshake that has not sent a byte: a real client sends its
//! request at once, so sockets held open in silence cannot keep it out.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::lock;
use crate::limit::TokenBucket;

/// Arrivals between sweeps of addresses that have no connection left.
const SWEEP_EVERY: u32 = 1024;
/// One address may hold at most this fraction of `--max-handshakes`
/// (1/8: 128 of the default 1024), so sockets that never finish their
/// handshake, all from one address, leave places for everyone else.
const HANDSHAKE_SHARE: usize = 8;

/// New connections a connection closed for misbehaving (flooding, a
/// broken frame) costs its address, of the `--max-per-ip` it may open a
/// minute: reconnecting at once does not undo the close.
pub const MISBEHAVIOUR_COST: u32 = 100;

/// The last `1/RESERVE_PART` of the connection slots go only to addresses
/// holding fewer than `1/RESERVE_PART` of `--max-per-ip`.
const RESERVE_PART: usize = 10;

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
    /// How addresses are grouped: the prefix lengths of IPv4 and IPv6.
    prefixes: (u8, u8),
    /// Handshakes that have sent nothing yet, oldest first, with when
    /// each arrived.
    waiting: Mutex<BTreeMap<u64, Waiting>>,
    next_arrival: AtomicU64,
}

/// How long a handshake may be silent before a newcomer may take its place:
/// a real client sends its request within milliseconds of connecting, and
/// one that is connecting now is not yet read.
const SILENT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// A handshake in progress, in the line a newcomer may take a place from.
#[derive(Debug)]
struct Waiting {
    since: Instant,
    /// Its address's key (see [`address_key`]).
    key: IpAddr,
    /// Whether it has sent anything yet.
    heard: bool,
    eviction: Arc<Eviction>,
}

impl Waiting {
    /// Whether it has been waiting long enough to be asked to make way.
    fn overdue(&self) -> bool {
        self.since.elapsed() >= SILENT_GRACE
    }
}

/// How a handshake is told to give its place up.
#[derive(Debug, Default)]
struct Eviction {
    /// Set when its place went to a newcomer (its permit is then not given
    /// back: the newcomer was given one in its stead).
    evicted: AtomicBool,
    token: CancellationToken,
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

/// The key an address is counted under: its network of `v4` bits (IPv4,
/// IPv4-mapped IPv6 too) or `v6` bits (IPv6).
fn address_key(ip: IpAddr, (v4, v6): (u8, u8)) -> IpAddr {
    match ip {
        IpAddr::V4(v4_ip) => IpAddr::V4(network_v4(v4_ip, v4)),
        IpAddr::V6(v6_ip) => match v6_ip.to_ipv4_mapped() {
            Some(mapped) => IpAddr::V4(network_v4(mapped, v4)),
            None => {
                let bits = u32::from(v6.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6_ip) & mask))
            }
        },
    }
}

fn network_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(prefix.min(32));
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

/// Addresses are grouped as IPv4 /24 and IPv6 /48 unless told otherwise.
pub const DEFAULT_PREFIXES: (u8, u8) = (24, 48);

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
            prefixes: DEFAULT_PREFIXES,
            waiting: Mutex::new(BTreeMap::new()),
            next_arrival: AtomicU64::new(0),
        }
    }

    /// Groups client addresses by networks of `v4` and `v6` bits (32 and
    /// 128: each address on its own).
    #[must_use]
    pub fn with_prefixes(mut self, v4: u8, v6: u8) -> Self {
        self.prefixes = (v4, v6);
        self
    }

    fn key(&self, ip: IpAddr) -> IpAddr {
        address_key(ip, self.prefixes)
    }

    /// Whether most handshake places are taken (handshakes then get less
    /// time).
    pub fn pressed(&self) -> bool {
        self.handshakes.available_permits() < self.max_handshakes / 4
    }

    /// Gives a place to a newcomer: that of the oldest handshake that has
    /// sent nothing (for [`SILENT_GRACE`] at least), or else of the oldest
    /// one (as long waiting) from `busiest`, the address holding the most
    /// places. That handshake is told to close, and one more place is made
    /// now for the newcomer (the evicted one's is not given back).
    fn evict_for_newcomer(&self, busiest: Option<IpAddr>) -> bool {
        let victim = {
            let mut waiting = lock(&self.waiting);
            let silent = waiting
                .iter()
                .find(|(_, w)| !w.heard)
                .filter(|(_, w)| w.overdue());
            let from_busiest = || {
                let key = busiest?;
                waiting.iter().find(|(_, w)| w.key == key && w.overdue())
            };
            let arrival = silent.or_else(from_busiest).map(|(arrival, _)| *arrival);
            arrival.and_then(|arrival| waiting.remove(&arrival))
        };
        let Some(victim) = victim else {
            return false;
        };
        victim.eviction.evicted.store(true, Ordering::Relaxed);
        victim.eviction.token.cancel();
        self.handshakes.add_permits(1);
        true
    }

    /// A connection from `ip` was closed for misbehaving: its address may
    /// open [`MISBEHAVIOUR_COST`] fewer new connections for now.
    pub fn misbehaved(&self, ip: IpAddr) {
        let key = self.key(ip);
        let mut addresses = lock(&self.addresses);
        if let Some(arrivals) = addresses
            .by_key
            .get_mut(&key)
            .and_then(|address| address.arrivals.as_mut())
        {
            arrivals.charge(MISBEHAVIOUR_COST);
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
        let key = self.key(ip);
        let address = addresses.by_key.entry(key).or_default();
        address
            .budget
            .get_or_insert_with(|| full.clone())
            .try_take()
    }

    /// A new TCP connection from `ip`: its handshake place and its count
    /// against the address, or `None` (close it at once) when every
    /// handshake place is taken by one that has sent something already, its
    /// address already holds a
    /// [`HANDSHAKE_SHARE`] of them, or has opened more than `--max-per-ip`
    /// connections per minute (in bursts of a quarter more). An address
    /// that holds `--max-per-ip` connections is let through to hear 503
    /// rather than be closed without a word, as is one that holds a tenth
    /// of that while only the last tenth of the slots is left (kept for
    /// addresses that hold fewer).
    pub fn arrive(self: &Arc<Self>, ip: IpAddr) -> Option<Arriving> {
        let share = (self.max_handshakes / HANDSHAKE_SHARE).max(1);
        let mut addresses = lock(&self.addresses);
        addresses.arrivals = addresses.arrivals.wrapping_add(1);
        if addresses.arrivals.is_multiple_of(SWEEP_EVERY) {
            let now = Instant::now();
            addresses.by_key.retain(|_, a| !a.forgettable(now));
        }
        let max_per_ip = self.max_per_ip;
        let key = self.key(ip);
        // With every place taken, the address holding most may have to
        // make way, if it holds more than the newcomer's would.
        let busiest = if self.handshakes.available_permits() == 0 {
            let own = addresses.by_key.get(&key).map_or(0, |a| a.handshake);
            addresses
                .by_key
                .iter()
                .filter(|(other, a)| **other != key && a.handshake > own + 1)
                .max_by_key(|(_, a)| a.handshake)
                .map(|(other, _)| *other)
        } else {
            None
        };
        let address = addresses.by_key.entry(key).or_default();
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
        let permit = match self.handshakes.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) if self.evict_for_newcomer(busiest) => {
                self.handshakes.clone().try_acquire_owned().ok()?
            }
            Err(_) => return None,
        };
        // The last slots are kept for addresses that hold few: a handful
        // of addresses, each within --max-per-ip, cannot take them all.
        let reserved = self.max_per_ip > 0
            && self.slots.available_permits() <= self.max_connections / RESERVE_PART
            && address.connections >= (self.max_per_ip / RESERVE_PART).max(1);
        address.connections += 1;
        address.handshake += 1;
        let crowded = reserved || (self.max_per_ip > 0 && address.connections > self.max_per_ip);
        drop(addresses);
        let arrival = self.next_arrival.fetch_add(1, Ordering::Relaxed);
        let eviction = Arc::new(Eviction::default());
        let waiting = Waiting {
            since: Instant::now(),
            key,
            heard: false,
            eviction: eviction.clone(),
        };
        lock(&self.waiting).insert(arrival, waiting);
        Some(Arriving {
            handshake: Some(HandshakePlace {
                permit: Some(permit),
                admission: self.clone(),
                ip,
                arrival,
                eviction,
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
            .get(&self.key(ip))
            .map_or(0, |a| a.connections)
    }

    /// Makes every handshake in progress `by` older.
    #[cfg(test)]
    fn age_waiting(&self, by: std::time::Duration) {
        for waiting in lock(&self.waiting).values_mut() {
            waiting.since -= by;
        }
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
    permit: Option<OwnedSemaphorePermit>,
    admission: Arc<Admission>,
    ip: IpAddr,
    /// Its place in the line of handshakes in progress.
    arrival: u64,
    eviction: Arc<Eviction>,
}

impl Drop for HandshakePlace {
    fn drop(&mut self) {
        lock(&self.admission.waiting).remove(&self.arrival);
        if self.eviction.evicted.load(Ordering::Relaxed)
            && let Some(permit) = self.permit.take()
        {
            // A newcomer was given a place of its own in this one's stead.
            permit.forget();
        }
        let mut addresses = lock(&self.admission.addresses);
        if let Some(address) = addresses.by_key.get_mut(&self.admission.key(self.ip)) {
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
    /// The first bytes of the request arrived: this handshake is no longer
    /// silent, and gives its place up only if its address holds the most.
    pub fn heard(&self) {
        if let Some(place) = &self.handshake
            && let Some(waiting) = lock(&place.admission.waiting).get_mut(&place.arrival)
        {
            waiting.heard = true;
        }
    }

    #[cfg(test)]
    fn eviction(&self) -> &Eviction {
        &self.handshake.as_ref().expect("in its handshake").eviction
    }

    /// Completes when a newcomer took this handshake's place.
    pub async fn evicted(&self) {
        match &self.handshake {
            Some(place) => place.eviction.token.cancelled().await,
            None => std::future::pending().await,
        }
    }

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
        let key = self.admission.key(self.ip);
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
        let b = admission.arrive(AWAY).expect("second");
        // Both have begun their requests: neither gives its place up.
        a.heard();
        b.heard();
        let third: IpAddr = "10.0.3.3".parse().expect("ip");
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
    fn the_last_slots_are_kept_for_addresses_that_hold_few() {
        // 20 slots, 10 per address: the last 2 go to addresses holding none.
        let admission = Arc::new(Admission::new(100, 20, 10));
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(admission.arrive(HOME).expect("home").admit().expect("in"));
        }
        for _ in 0..8 {
            held.push(admission.arrive(AWAY).expect("away").admit().expect("in"));
        }
        // AWAY is within its share, but only the kept slots are left.
        let refused = admission.arrive(AWAY).expect("arrives").admit();
        assert_eq!(refused.err(), Some(Full::Address));
        let third: IpAddr = "10.0.5.1".parse().expect("ip");
        let fourth: IpAddr = "10.0.6.1".parse().expect("ip");
        held.push(admission.arrive(third).expect("third").admit().expect("in"));
        let again = admission.arrive(third).expect("arrives").admit();
        assert_eq!(again.err(), Some(Full::Address));
        held.push(
            admission
                .arrive(fourth)
                .expect("fourth")
                .admit()
                .expect("in"),
        );
        // Once one goes, AWAY is under the line again only if slots free up.
        held.truncate(10);
        assert!(admission.arrive(AWAY).expect("away").admit().is_ok());
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
    fn addresses_are_counted_by_their_24_and_48() {
        let admission = Arc::new(Admission::new(10, 10, 1));
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:ff:ffff::9".parse().expect("ip");
        let elsewhere: IpAddr = "2001:db8:2::1".parse().expect("ip");
        let _in = admission.arrive(one).expect("one").admit().expect("in");
        assert_eq!(
            admission.arrive(other).expect("other").admit().err(),
            Some(Full::Address)
        );
        assert!(admission.arrive(elsewhere).expect("else").admit().is_ok());
        let v4: IpAddr = "10.1.2.3".parse().expect("ip");
        let neighbour: IpAddr = "10.1.2.200".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.1.2.9".parse().expect("ip");
        let _in = admission.arrive(v4).expect("v4").admit().expect("in");
        for same in [neighbour, mapped] {
            let refused = admission.arrive(same).expect("arrives").admit();
            assert_eq!(refused.err(), Some(Full::Address), "{same}");
        }
        // Each address on its own, as asked.
        let single = Arc::new(Admission::new(10, 10, 1).with_prefixes(32, 128));
        let _v4 = single.arrive(v4).expect("v4").admit().expect("in");
        assert!(single.arrive(neighbour).expect("n").admit().is_ok());
        let _one = single.arrive(one).expect("one").admit().expect("in");
        let beside: IpAddr = "2001:db8:1:2::2".parse().expect("ip");
        assert!(single.arrive(beside).expect("b").admit().is_ok());
    }

    #[test]
    fn a_newcomer_takes_the_place_of_the_oldest_silent_handshake() {
        let admission = Arc::new(Admission::new(3, 10, 0).with_prefixes(32, 128));
        let ip = |n: u8| IpAddr::V4(std::net::Ipv4Addr::new(10, 0, n, 1));
        let oldest = admission.arrive(ip(1)).expect("1");
        let talking = admission.arrive(ip(2)).expect("2");
        talking.heard();
        let silent = admission.arrive(ip(3)).expect("3");
        // Full, and no one silent for long yet: a newcomer is turned away.
        assert!(admission.arrive(ip(4)).is_none());
        admission.age_waiting(SILENT_GRACE);
        // Then the oldest silent one makes way.
        let newcomer = admission.arrive(ip(4)).expect("the newcomer gets in");
        assert!(oldest.eviction().token.is_cancelled());
        assert!(!silent.eviction().token.is_cancelled());
        drop(oldest);
        // The evicted place is not given back: still full, and the next
        // newcomer takes the next silent one's place, never a talking one's.
        newcomer.heard();
        admission.age_waiting(SILENT_GRACE);
        let next = admission.arrive(ip(5)).expect("the next newcomer");
        assert!(silent.eviction().token.is_cancelled());
        assert!(!talking.eviction().token.is_cancelled());
        drop(silent);
        next.heard();
        admission.age_waiting(SILENT_GRACE);
        assert!(
            admission.arrive(ip(6)).is_none(),
            "everyone left is talking"
        );
        drop((talking, newcomer, next));
        assert_eq!(admission.handshakes.available_permits(), 3);
    }

    #[test]
    fn with_no_one_silent_the_address_holding_most_makes_way() {
        // 16 places, 2 per address: eight addresses fill them, each with
        // requests begun (a slow trickle, say).
        let admission = Arc::new(Admission::new(16, 100, 0).with_prefixes(32, 128));
        let ip = |n: u8| IpAddr::V4(std::net::Ipv4Addr::new(10, 0, n, 1));
        let mut begun = Vec::new();
        for n in 1..=8 {
            for _ in 0..2 {
                let arriving = admission.arrive(ip(n)).expect("a place");
                arriving.heard();
                begun.push(arriving);
            }
        }
        // Not before they have been at it for a while.
        assert!(admission.arrive(ip(9)).is_none());
        admission.age_waiting(SILENT_GRACE);
        let newcomer = admission.arrive(ip(9)).expect("the newcomer gets in");
        let gave_way: Vec<usize> = (0..begun.len())
            .filter(|&i| begun[i].eviction().token.is_cancelled())
            .collect();
        assert_eq!(gave_way.len(), 1, "{gave_way:?}");
        // The oldest of its address's.
        assert_eq!(gave_way[0] % 2, 0);
        drop(begun.remove(gave_way[0]));
        // Now the newcomer's address holds one, as does the one that made
        // way: the next from there waits its turn like everyone else.
        newcomer.heard();
        admission.age_waiting(SILENT_GRACE);
        assert!(admission.arrive(ip(9)).is_none());
    }

    #[test]
    fn misbehaving_costs_an_address_its_new_connections() {
        // 10 a minute, bursts of 12: one close for misbehaving spends them.
        let admission = Arc::new(Admission::new(100, 100, 10));
        let first = admission.arrive(HOME).expect("home").admit().expect("in");
        admission.misbehaved(HOME);
        drop(first);
        assert!(admission.arrive(HOME).is_none(), "reset at once");
        assert!(admission.arrive(AWAY).expect("away").admit().is_ok());
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
