//! Where a node is, from `mxp://host:port[?quic=PORT]` or `host:port`.

use std::io;
use std::net::SocketAddr;

use mxp_proto::PublicKey;

use crate::carrier::Target;
use crate::error::ConnectError;

/// The QUIC addresses to try when only the MXP address is known: the next
/// port up (the default layout) and the same port.
pub(super) fn default_quic_addrs(mxp: SocketAddr) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    if let Some(next) = mxp.port().checked_add(1) {
        addrs.push(SocketAddr::new(mxp.ip(), next));
    }
    addrs.push(mxp);
    addrs
}

pub(super) async fn resolve_target(address: &str, key: PublicKey) -> Result<Target, ConnectError> {
    let (base, quic_port) = match address.split_once("?quic=") {
        Some((base, port)) => {
            let port: u16 = port
                .parse()
                .map_err(|_| ConnectError::InvalidAddress(address.to_owned()))?;
            (base, Some(port))
        }
        None => (address, None),
    };
    let mxp = resolve_address(base).await?;
    let quic = match quic_port {
        Some(p) => vec![SocketAddr::new(mxp.ip(), p)],
        None => default_quic_addrs(mxp),
    };
    Ok(Target { mxp, quic, key })
}

/// Resolves `mxp://host:port` (or `host:port`) to a socket address,
/// preferring IPv4 when a name has both.
pub async fn resolve_address(address: &str) -> Result<SocketAddr, ConnectError> {
    let rest = address.strip_prefix("mxp://").unwrap_or(address);
    let host_port = rest.split(['/', '?']).next().unwrap_or_default();
    if host_port.is_empty() || !host_port.contains(':') {
        return Err(ConnectError::InvalidAddress(address.to_owned()));
    }
    if let Ok(addr) = host_port.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let addrs =
        tokio::net::lookup_host(host_port)
            .await
            .map_err(|source| ConnectError::Resolve {
                host: host_port.to_owned(),
                source,
            })?;
    let mut first = None;
    for a in addrs {
        if a.is_ipv4() {
            return Ok(a);
        }
        first.get_or_insert(a);
    }
    first.ok_or_else(|| ConnectError::Resolve {
        host: host_port.to_owned(),
        source: io::Error::new(io::ErrorKind::NotFound, "no address"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    pub(super) async fn addresses_parse_with_or_without_scheme_and_a_quic_port() {
        for a in [
            "mxp://127.0.0.1:9000",
            "127.0.0.1:9000",
            "mxp://127.0.0.1:9000/agent-1",
        ] {
            assert_eq!(
                resolve_address(a).await.unwrap(),
                "127.0.0.1:9000".parse().unwrap()
            );
        }
        assert_eq!(
            resolve_address("mxp://localhost:9000")
                .await
                .unwrap()
                .port(),
            9000
        );
        for bad in ["mxp://", "nonsense", "mxp://host-without-port"] {
            assert!(
                matches!(
                    resolve_address(bad).await,
                    Err(ConnectError::InvalidAddress(_))
                ),
                "{bad}"
            );
        }
        let key = mxp_proto::Keypair::generate().public();
        let t = resolve_target("mxp://127.0.0.1:9000?quic=9443", key)
            .await
            .unwrap();
        assert_eq!(t.quic, vec!["127.0.0.1:9443".parse().unwrap()]);
        let t = resolve_target("mxp://127.0.0.1:9000", key).await.unwrap();
        assert_eq!(
            t.quic,
            vec![
                "127.0.0.1:9001".parse().unwrap(),
                "127.0.0.1:9000".parse().unwrap()
            ]
        );
        assert!(
            resolve_target("mxp://127.0.0.1:9000?quic=x", key)
                .await
                .is_err()
        );
    }
}
