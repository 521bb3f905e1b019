//! Who gets in: handshakes in progress, connection slots and connections
//! per client address.
//!
//! A TCP connection first takes one of `--max-handshakes` places (none left:
//! it is closed at once) and counts against its address's
//! `--max-per-ip`. Only a handshake that succeeds takes one of
//! `--max-connections` slots, so sockets that never finish their handshake
//! cost a bounded number of places for at most `--handshake-timeout`, and
//! never keep real users out of the chat.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::lock;

/// The server's places: handshakes, slots and per-address counts.
#[derive(Debug)]
pub struct Admission {
    handshakes: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    max_per_ip: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
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
            slots: Arc::new(Semaphore::new(max_connections)),
            max_per_ip,
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// A new TCP connection from `ip`: its handshake place and its count
    /// against the address, or `None` when every handshake place is taken.
    pub fn arrive(self: &Arc<Self>, ip: IpAddr) -> Option<Arriving> {
        let handshake = self.handshakes.clone().try_acquire_owned().ok()?;
        let crowded = {
            let mut per_ip = lock(&self.per_ip);
            let count = per_ip.entry(ip).or_insert(0);
            *count += 1;
            self.max_per_ip > 0 && *count > self.max_per_ip
        };
        Some(Arriving {
            handshake: Some(handshake),
            presence: AddressCount {
                admission: self.clone(),
                ip,
            },
            crowded,
        })
    }

    /// Connections open from `ip` (for tests and diagnostics).
    pub fn from_address(&self, ip: IpAddr) -> usize {
        lock(&self.per_ip).get(&ip).copied().unwrap_or(0)
    }
}

/// A connection in its handshake.
#[derive(Debug)]
pub struct Arriving {
    handshake: Option<OwnedSemaphorePermit>,
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
        let mut per_ip = lock(&self.admission.per_ip);
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
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
        let _b = admission.arrive(HOME).expect("second");
        assert!(admission.arrive(HOME).is_none());
        let _a = a.admit().expect("admitted");
        assert!(admission.arrive(HOME).is_some());
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
        assert_eq!(admission.from_address(HOME), 2);
        drop(a);
        assert_eq!(admission.from_address(HOME), 1);
        assert!(admission.arrive(HOME).expect("again").admit().is_ok());
        assert_eq!(admission.from_address(AWAY), 0);
    }
}
