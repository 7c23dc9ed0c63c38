//! Prometheus metrics of a node, in the text exposition format served at
//! the admin endpoint's `GET /metrics`.
//!
//! Carrier and drain state are read from the endpoint when scraped, so
//! they cost nothing between scrapes. Every metric is named `mxp_*`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::{Carrier, Endpoint};

/// Builds the registry for `endpoint`.
pub fn registry(endpoint: &Endpoint) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(CarrierState(endpoint.clone())));
    registry
}

/// Renders `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// The deployment switch, drains, and connections per carrier.
#[derive(Debug)]
struct CarrierState(Endpoint);

fn gauge_per_carrier(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl Fn(Carrier) -> f64,
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstGauge::new(0.0f64).metric_type())?;
    for carrier in [Carrier::Mxp, Carrier::Quic] {
        let labels = [("carrier", carrier.as_str())];
        let metric = family.encode_family(&labels)?;
        ConstGauge::new(value(carrier)).encode(metric)?;
    }
    Ok(())
}

impl Collector for CarrierState {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let status = self.0.status();
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        gauge_per_carrier(
            &mut encoder,
            "mxp_carrier_accepting",
            "Whether the carrier accepts new sessions (the deployment switch)",
            |c| flag(status.accepting.accepts(c)),
        )?;
        gauge_per_carrier(
            &mut encoder,
            "mxp_drain_active",
            "Whether the carrier is being drained",
            |c| flag(status.draining.iter().any(|d| d.carrier == c)),
        )?;
        gauge_per_carrier(
            &mut encoder,
            "mxp_drain_deadline_seconds",
            "Seconds until a draining carrier's remaining connections are closed (0: not draining)",
            |c| {
                status
                    .draining
                    .iter()
                    .find(|d| d.carrier == c)
                    .map_or(0.0, |d| d.deadline_in_s)
            },
        )?;
        gauge_per_carrier(
            &mut encoder,
            "mxp_connections_active",
            "Open connections",
            |c| match c {
                Carrier::Mxp => status.connections.mxp as f64,
                Carrier::Quic => status.connections.quic as f64,
            },
        )?;
        let fallbacks = ConstCounter::new(status.fallbacks);
        let metric = encoder.encode_descriptor(
            "mxp_carrier_fallbacks",
            "Client connections that fell back from MXP to QUIC",
            None,
            fallbacks.metric_type(),
        )?;
        fallbacks.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Carriers, Options};
    use mxp_proto::{EndpointConfig, Keypair};

    #[tokio::test]
    async fn carrier_state_is_exposed_and_follows_the_switch() {
        let options = Options {
            quic_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Options::new(EndpointConfig::server(Keypair::generate()))
        };
        let node = Endpoint::with_options("127.0.0.1:0".parse().unwrap(), options).unwrap();
        let registry = registry(&node);
        let text = render(&registry);
        assert!(
            text.contains(r#"mxp_carrier_accepting{carrier="mxp"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mxp_carrier_accepting{carrier="quic"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mxp_drain_active{carrier="mxp"} 0"#),
            "{text}"
        );
        assert!(text.contains("mxp_carrier_fallbacks_total 0"), "{text}");
        node.set_carriers(Carriers::QUIC);
        let text = render(&registry);
        assert!(
            text.contains(r#"mxp_carrier_accepting{carrier="mxp"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mxp_drain_active{carrier="mxp"} 1"#),
            "{text}"
        );
    }
}
