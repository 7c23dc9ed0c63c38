//! A node's `/metrics`, read over HTTP as Prometheus reads it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use mxp::admin;

/// One scrape: every sample, keyed by its series as printed
/// (`name{label="value",...}`).
pub(crate) struct Scrape(pub HashMap<String, f64>);

impl Scrape {
    /// Scrapes the admin endpoint at `admin` (a hang guard of a minute).
    pub(crate) async fn at(admin: SocketAddr) -> Scrape {
        let (status, text) = tokio::time::timeout(
            Duration::from_secs(60),
            admin::request(admin, "GET", "/metrics", None, None),
        )
        .await
        .expect("scraped within the hang guard")
        .expect("the admin endpoint answers");
        assert_eq!(status, 200, "{text}");
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("series value");
                (series.to_owned(), value.parse().expect("a number"))
            })
            .collect();
        Scrape(samples)
    }

    pub(crate) fn get(&self, series: &str) -> f64 {
        *self
            .0
            .get(series)
            .unwrap_or_else(|| panic!("{series} not served"))
    }
}
