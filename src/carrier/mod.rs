//! The two carriers a connection can ride on, the switch between them,
//! and ([`contract`]) what a carrier implements.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::Serialize;

pub(crate) mod contract;

/// What carries a connection's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Carrier {
    /// MXP's own transport.
    Mxp,
    /// The legacy QUIC path (quinn), kept as the fallback.
    Quic,
}

impl Carrier {
    /// Both carriers, MXP first.
    pub const ALL: [Carrier; 2] = [Carrier::Mxp, Carrier::Quic];

    /// Lower-case name, as in metrics labels, JSON and the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Carrier::Mxp => "mxp",
            Carrier::Quic => "quic",
        }
    }
}

impl fmt::Display for Carrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Carrier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Carrier::ALL
            .into_iter()
            .find(|c| c.as_str() == s.trim())
            .ok_or_else(|| format!("expected mxp or quic, got {s:?}"))
    }
}

/// How a client picks the carrier for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CarrierMode {
    /// MXP only.
    Mxp,
    /// QUIC only.
    Quic,
    /// MXP, falling back to QUIC when the node refuses MXP or MXP does not
    /// answer in time; new connections try MXP again later.
    #[default]
    Auto,
}

impl FromStr for CarrierMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mxp" => Ok(CarrierMode::Mxp),
            "quic" => Ok(CarrierMode::Quic),
            "auto" => Ok(CarrierMode::Auto),
            other => Err(format!("unknown carrier {other:?} (use mxp, quic or auto)")),
        }
    }
}

/// Which carriers a node accepts new sessions on: the deployment switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Carriers {
    /// New MXP sessions are accepted.
    pub mxp: bool,
    /// New QUIC sessions are accepted.
    pub quic: bool,
}

impl Carriers {
    /// Both carriers.
    pub const BOTH: Carriers = Carriers {
        mxp: true,
        quic: true,
    };
    /// MXP only.
    pub const MXP: Carriers = Carriers {
        mxp: true,
        quic: false,
    };
    /// QUIC only (the rollback).
    pub const QUIC: Carriers = Carriers {
        mxp: false,
        quic: true,
    };

    /// `carrier` alone.
    pub fn only(carrier: Carrier) -> Carriers {
        match carrier {
            Carrier::Mxp => Carriers::MXP,
            Carrier::Quic => Carriers::QUIC,
        }
    }

    /// Whether `carrier` accepts new sessions.
    pub fn accepts(self, carrier: Carrier) -> bool {
        match carrier {
            Carrier::Mxp => self.mxp,
            Carrier::Quic => self.quic,
        }
    }

    /// `mxp`, `quic` or `both`.
    pub fn as_str(self) -> &'static str {
        match (self.mxp, self.quic) {
            (true, true) => "both",
            (true, false) => "mxp",
            (false, true) => "quic",
            (false, false) => "none",
        }
    }
}

impl fmt::Display for Carriers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Carriers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "both" => Ok(Carriers::BOTH),
            "mxp" => Ok(Carriers::MXP),
            "quic" => Ok(Carriers::QUIC),
            other => Err(format!(
                "unknown carrier setting {other:?} (use mxp, quic or both)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in [Carriers::BOTH, Carriers::MXP, Carriers::QUIC] {
            assert_eq!(c.as_str().parse::<Carriers>(), Ok(c));
        }
        assert!("none".parse::<Carriers>().is_err());
        assert_eq!("auto".parse::<CarrierMode>(), Ok(CarrierMode::Auto));
        assert!("tcp".parse::<CarrierMode>().is_err());
    }
}

/// Where a node is: its MXP address, the QUIC addresses to try, its key.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub mxp: SocketAddr,
    pub quic: Vec<SocketAddr>,
    pub key: mxp_proto::PublicKey,
}
