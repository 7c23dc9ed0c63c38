//! Stream identifiers: who opened a stream and in which direction it flows
//! are encoded in its two low bits, so both peers allocate ids without
//! coordination.

use std::fmt;

/// Which end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The end that initiated the handshake.
    Client = 0,
    /// The end that answered it: the node (what operators, logs, metrics
    /// and snapshots call the server end).
    Node = 1,
}

impl Side {
    /// The other end.
    #[inline]
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Node,
            Side::Node => Side::Client,
        }
    }

    /// The name logs, metrics and snapshots use: `client` or `node`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Node => "node",
        }
    }

    /// Whether this is the client end.
    #[inline]
    pub fn is_client(self) -> bool {
        self == Side::Client
    }
}

/// Whether a stream carries data both ways or only from its opener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Both ends send.
    Bi = 0,
    /// Only the opener sends.
    Uni = 1,
}

impl Dir {
    /// Both directions, for per-direction arrays.
    pub const ALL: [Dir; 2] = [Dir::Bi, Dir::Uni];
}

/// Identifies a stream within a connection.
///
/// Bit 0 is the opener ([`Side`]), bit 1 the direction ([`Dir`]); the rest is
/// the stream's index among those of the same opener and direction.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64);

impl StreamId {
    /// The `index`-th stream opened by `initiator` in direction `dir`.
    #[inline]
    pub fn new(initiator: Side, dir: Dir, index: u64) -> Self {
        StreamId((index << 2) | ((dir as u64) << 1) | initiator as u64)
    }

    /// Which end opened the stream.
    #[inline]
    pub fn initiator(self) -> Side {
        if self.0 & 1 == 0 {
            Side::Client
        } else {
            Side::Node
        }
    }

    /// Direction of the stream.
    #[inline]
    pub fn dir(self) -> Dir {
        if self.0 & 2 == 0 { Dir::Bi } else { Dir::Uni }
    }

    /// Position among the streams of the same opener and direction.
    #[inline]
    pub fn index(self) -> u64 {
        self.0 >> 2
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.initiator() {
            Side::Client => "client",
            Side::Node => "node",
        };
        let dir = match self.dir() {
            Dir::Bi => "bi",
            Dir::Uni => "uni",
        };
        write!(f, "{side} {dir} stream {}", self.index())
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_bits_round_trip() {
        for side in [Side::Client, Side::Node] {
            for dir in Dir::ALL {
                for index in [0, 1, 7, 1 << 40] {
                    let id = StreamId::new(side, dir, index);
                    assert_eq!((id.initiator(), id.dir(), id.index()), (side, dir, index));
                }
            }
        }
    }
}
