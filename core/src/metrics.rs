//! Prometheus metrics: per-route request counts by status class, latency histograms, and
//! upstream errors. Each route's counters are atomics reached through its routing entry, so
//! the hot path takes no lock; the registry's lock is taken only when routes are rebuilt and
//! when `/metrics` is scraped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why an upstream request failed.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamError {
    Connect,
    Timeout,
    Other,
}

/// Counters of one route.
#[derive(Default)]
pub struct RouteMetrics {
    edge_id: String,
    by_class: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    upstream_errors: [AtomicU64; 3],
}

impl RouteMetrics {
    /// Counts one answered request.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// Counts one failed upstream request.
    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].fetch_add(1, Relaxed);
    }
}

/// All metrics of one gateway.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Arc<RouteMetrics>>>,
    /// Edge requests that matched no edge or route.
    pub unmatched: AtomicU64,
    /// Management API requests by status class.
    api_by_class: [AtomicU64; 5],
}

impl Metrics {
    /// The counters of a route, the same ones across route table rebuilds.
    pub fn route(&self, edge_id: &str, route_id: &str) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        routes
            .entry(route_id.to_string())
            .or_insert_with(|| {
                Arc::new(RouteMetrics {
                    edge_id: edge_id.to_string(),
                    ..Default::default()
                })
            })
            .clone()
    }

    /// Drops the counters of routes that no longer exist.
    pub fn retain_routes(&self, live: &std::collections::HashSet<&str>) {
        let mut routes = self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        routes.retain(|route_id, _| live.contains(route_id.as_str()));
    }

    /// Counts one management API request.
    pub fn observe_api(&self, status: u16) {
        self.api_by_class[usize::from((status / 100).clamp(1, 5)) - 1].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut out = String::new();
        out.push_str("# HELP portcullis_http_requests_total Edge requests answered, by route and status class.\n");
        out.push_str("# TYPE portcullis_http_requests_total counter\n");
        for (route_id, m) in &routes {
            for (i, n) in m.by_class.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "portcullis_http_requests_total{{edge=\"{}\",route=\"{route_id}\",code=\"{}xx\"}} {}",
                    m.edge_id,
                    i + 1,
                    n.load(Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP portcullis_http_request_duration_seconds Time from request to response headers, by route.\n",
        );
        out.push_str("# TYPE portcullis_http_request_duration_seconds histogram\n");
        for (route_id, m) in &routes {
            let labels = format!("edge=\"{}\",route=\"{route_id}\"", m.edge_id);
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(&m.buckets) {
                cumulative += n.load(Relaxed);
                let _ = writeln!(
                    out,
                    "portcullis_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = m.count.load(Relaxed);
            let _ = writeln!(
                out,
                "portcullis_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let sum = m.sum_micros.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "portcullis_http_request_duration_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(
                out,
                "portcullis_http_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
        out.push_str("# HELP portcullis_upstream_errors_total Upstream requests that failed, by route and kind.\n");
        out.push_str("# TYPE portcullis_upstream_errors_total counter\n");
        for (route_id, m) in &routes {
            for (kind, n) in ["connect", "timeout", "other"].iter().zip(&m.upstream_errors) {
                let _ = writeln!(
                    out,
                    "portcullis_upstream_errors_total{{edge=\"{}\",route=\"{route_id}\",kind=\"{kind}\"}} {}",
                    m.edge_id,
                    n.load(Relaxed)
                );
            }
        }
        out.push_str("# HELP portcullis_unmatched_requests_total Edge requests that matched no edge or route.\n");
        out.push_str("# TYPE portcullis_unmatched_requests_total counter\n");
        let _ = writeln!(
            out,
            "portcullis_unmatched_requests_total {}",
            self.unmatched.load(Relaxed)
        );
        out.push_str("# HELP portcullis_api_requests_total Management API requests, by status class.\n");
        out.push_str("# TYPE portcullis_api_requests_total counter\n");
        for (i, n) in self.api_by_class.iter().enumerate() {
            let _ = writeln!(
                out,
                "portcullis_api_requests_total{{code=\"{}xx\"}} {}",
                i + 1,
                n.load(Relaxed)
            );
        }
        out
    }
}
