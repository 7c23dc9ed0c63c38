//! The Prometheus text format of [`collect`](super::collect)'s families,
//! through prometheus-client: one collector reads the endpoint at scrape
//! time, so nothing is copied into a registry between scrapes.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::Registry;

use mxp_proto::histogram::{LATENCY_BOUNDS_NS, LatencyHistogram};

use super::{Family, Kind, Value, collect};
use crate::Endpoint;

/// `endpoint`'s metrics now, in the Prometheus text exposition format (what
/// the admin endpoint serves at `GET /metrics`).
pub fn render(endpoint: &Endpoint) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(endpoint.clone())));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Scrape(Endpoint);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in collect(&self.0) {
            encode_family(&mut encoder, &family)?;
        }
        Ok(())
    }
}

fn encode_family(encoder: &mut DescriptorEncoder<'_>, family: &Family) -> std::fmt::Result {
    let metric_type = match family.kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
        Kind::Histogram => MetricType::Histogram,
    };
    let mut metric = encoder.encode_descriptor(family.name, family.help, None, metric_type)?;
    for sample in &family.samples {
        if sample.labels.is_empty() {
            encode_value(&mut metric, &sample.value)?;
        } else {
            encode_value(&mut metric.encode_family(&sample.labels)?, &sample.value)?;
        }
    }
    Ok(())
}

fn encode_value(metric: &mut MetricEncoder<'_>, value: &Value) -> std::fmt::Result {
    match value {
        Value::Count(n) => metric.encode_counter(n, None::<&Exemplar<NoLabelSet, u64>>),
        Value::Real(x) => metric.encode_gauge(x),
        Value::Histogram(h) => {
            let buckets = seconds_buckets(h);
            metric.encode_histogram::<NoLabelSet>(h.sum_ns as f64 / 1e9, h.count(), &buckets, None)
        }
    }
}

/// `(upper bound in seconds, count)` per bucket, not cumulative, the
/// overflow bucket last as `+Inf`.
fn seconds_buckets(h: &LatencyHistogram) -> Vec<(f64, u64)> {
    LATENCY_BOUNDS_NS
        .iter()
        .map(|&ns| ns as f64 / 1e9)
        .chain([f64::INFINITY])
        .zip(h.buckets)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Carriers, Options};
    use mxp_proto::{EndpointConfig, Keypair};

    #[tokio::test]
    async fn every_family_is_served_and_the_switch_state_follows_it() {
        let options = Options {
            quic_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Options::new(EndpointConfig::server(Keypair::generate()))
        };
        let node = Endpoint::with_options("127.0.0.1:0".parse().unwrap(), options).unwrap();
        let text = render(&node);
        for line in [
            r#"mxp_carrier_accepting{carrier="mxp"} 1"#,
            r#"mxp_carrier_accepting{carrier="quic"} 1"#,
            r#"mxp_drain_active{carrier="mxp"} 0"#,
            "mxp_carrier_fallbacks_total 0",
            r#"mxp_replay_rejections_total{kind="initiation_replayed"} 0"#,
            "mxp_amplification_blocked_total 0",
            r#"mxp_rtt_seconds_bucket{le="0.000025"} 0"#,
            r#"mxp_rtt_seconds_bucket{le="+Inf"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        for family in collect(&node) {
            let name = family.exposed_name();
            let name = name.trim_end_matches("_total");
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} not served"
            );
        }
        node.set_carriers(Carriers::QUIC);
        let text = render(&node);
        assert!(
            text.contains(r#"mxp_carrier_accepting{carrier="mxp"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mxp_drain_active{carrier="mxp"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_are_the_latency_bounds_in_seconds() {
        let mut h = LatencyHistogram::default();
        h.record(std::time::Duration::from_micros(30));
        h.record(std::time::Duration::from_secs(1));
        let buckets = seconds_buckets(&h);
        assert_eq!(buckets.len(), LATENCY_BOUNDS_NS.len() + 1);
        assert_eq!(buckets[0], (25e-6, 0));
        assert_eq!(buckets[1], (35e-6, 1));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1)));
    }
}
