//! Which master is the primary (reference 1.5): no timeouts; every master that starts
//! playing primary takes a key (the time it started, then its address) and the smallest key
//! wins. Once a primary has started the cluster it cannot be deposed; a secondary that loses
//! its primary plays primary again with a new key.
//!
//! A plain state machine: the driver reports what it heard and sends what this returns.

use std::net::SocketAddr;

/// A master's claim to be the primary: smaller wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub timestamp: u64,
    pub address: SocketAddr,
}

/// What this master is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Electing: its key against the other masters'.
    Candidate(Key),
    Primary,
    /// Following the primary at this address.
    Secondary(SocketAddr),
}

/// What to answer a master that identifies with `their` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// "I am the primary (or win against you): follow me."
    Accept,
    /// "The primary is at this address" (possibly the asker itself).
    NotPrimary(Option<SocketAddr>),
}

#[derive(Clone, Debug)]
pub struct Election {
    pub role: Role,
    pub me: SocketAddr,
}

impl Election {
    /// A master among `others` starting at `timestamp`: primary at once if it is alone.
    pub fn new(me: SocketAddr, timestamp: u64, alone: bool) -> Election {
        let role =
            if alone { Role::Primary } else { Role::Candidate(Key { timestamp, address: me }) };
        Election { role, me }
    }

    pub fn is_primary(&self) -> bool {
        self.role == Role::Primary
    }

    /// Where the primary is, if known.
    pub fn primary(&self) -> Option<SocketAddr> {
        match self.role {
            Role::Primary => Some(self.me),
            Role::Secondary(primary) => Some(primary),
            Role::Candidate(_) => None,
        }
    }

    /// Another master identifies with its key.
    pub fn identified_by(&mut self, their: Key) -> Reply {
        match self.role {
            Role::Primary => Reply::Accept,
            Role::Secondary(primary) => Reply::NotPrimary(Some(primary)),
            Role::Candidate(mine) if mine < their => Reply::Accept,
            Role::Candidate(_) => {
                // They win: follow them, and tell them so.
                self.role = Role::Secondary(their.address);
                Reply::NotPrimary(Some(their.address))
            }
        }
    }

    /// The answer of a master this one identified to.
    pub fn answered(&mut self, from: SocketAddr, reply: Reply) {
        match (self.role, reply) {
            (Role::Candidate(_), Reply::Accept) => self.role = Role::Secondary(from),
            (Role::Candidate(_), Reply::NotPrimary(Some(primary))) if primary != self.me => {
                self.role = Role::Secondary(primary)
            }
            _ => {}
        }
    }

    /// Every other master was asked (or could not be reached) and none won: primary.
    pub fn asked_everyone(&mut self) {
        if let Role::Candidate(_) = self.role {
            self.role = Role::Primary;
        }
    }

    /// The primary this secondary followed is gone: play primary again, with a new key.
    pub fn primary_lost(&mut self, timestamp: u64) {
        if let Role::Secondary(_) = self.role {
            self.role = Role::Candidate(Key { timestamp, address: self.me });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_smallest_key_wins_whoever_asks() {
        let (a, b) = (address(1), address(2));
        let mut first = Election::new(a, 10, false);
        let mut second = Election::new(b, 20, false);
        // The later one asks the earlier one: told to follow.
        let reply = first.identified_by(Key { timestamp: 20, address: b });
        assert_eq!(reply, Reply::Accept);
        second.answered(a, reply);
        assert_eq!(second.role, Role::Secondary(a));
        // The earlier one asks the later (now secondary): told it is the primary itself.
        let reply = second.identified_by(Key { timestamp: 10, address: a });
        assert_eq!(reply, Reply::NotPrimary(Some(a)));
        first.answered(b, reply);
        first.asked_everyone();
        assert!(first.is_primary());

        // Crossing: the earlier asks a candidate that has not decided yet.
        let mut third = Election::new(b, 20, false);
        let reply = third.identified_by(Key { timestamp: 10, address: a });
        assert_eq!(reply, Reply::NotPrimary(Some(a)));
        assert_eq!(third.role, Role::Secondary(a));
    }

    #[test]
    fn a_lone_master_is_primary_and_a_lost_primary_is_replaced() {
        let mut alone = Election::new(address(1), 1, true);
        assert!(alone.is_primary());
        assert_eq!(alone.identified_by(Key { timestamp: 0, address: address(2) }), Reply::Accept);

        let mut secondary = Election::new(address(2), 5, false);
        secondary.answered(address(1), Reply::Accept);
        assert_eq!(secondary.primary(), Some(address(1)));
        secondary.primary_lost(9);
        assert_eq!(secondary.role, Role::Candidate(Key { timestamp: 9, address: address(2) }));
        secondary.asked_everyone();
        assert!(secondary.is_primary());
    }
}
