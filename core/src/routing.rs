//! The edge routing table: request host -> edge -> route -> upstream.
//!
//! The table is immutable and rebuilt from the store after every change; the proxy reads the
//! current one through an `ArcSwap`, so a lookup takes no lock and allocates nothing beyond
//! the lower-cased host. Exact paths win over prefixes; among prefixes the longest wins.

use crate::metrics::{Metrics, RouteMetrics};
use crate::model::{Edge, MatchType, StaticBackend};
use http::uri::{Authority, Scheme};
use std::collections::HashMap;
use std::sync::Arc;

/// Where a route sends its requests.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
}

/// A route, ready to serve.
pub struct RouteTarget {
    pub edge_id: String,
    pub route_id: String,
    /// `None` when the route has no enabled backend, or its backend is gone.
    pub upstream: Option<Upstream>,
    pub metrics: Arc<RouteMetrics>,
}

#[derive(Default)]
struct EdgeRoutes {
    exact: HashMap<String, Arc<RouteTarget>>,
    /// Longest prefix first.
    prefixes: Vec<(String, Arc<RouteTarget>)>,
}

/// The lookup structure the edge proxy reads.
#[derive(Default)]
pub struct RouteTable {
    by_hostport: HashMap<String, Arc<EdgeRoutes>>,
}

impl RouteTable {
    /// Builds the table from every edge and backend.
    pub fn build(edges: &[Edge], backends: &[StaticBackend], metrics: &Metrics) -> RouteTable {
        let upstreams: HashMap<&str, Option<Upstream>> = backends
            .iter()
            .map(|b| {
                let upstream = b.address.parse::<Authority>().ok().map(|authority| Upstream {
                    scheme: if b.tls { Scheme::HTTPS } else { Scheme::HTTP },
                    authority,
                });
                (b.id.as_str(), upstream)
            })
            .collect();
        let mut by_hostport = HashMap::new();
        for edge in edges {
            let mut routes = EdgeRoutes::default();
            for route in &edge.routes {
                let upstream = route
                    .backend
                    .as_ref()
                    .filter(|b| b.enabled)
                    .and_then(|b| upstreams.get(b.backend_id.as_str()).cloned().flatten());
                let target = Arc::new(RouteTarget {
                    edge_id: edge.id.clone(),
                    route_id: route.id.clone(),
                    upstream,
                    metrics: metrics.route(&edge.id, &route.id),
                });
                match route.match_type {
                    MatchType::ExactPath => {
                        routes.exact.insert(route.path.clone(), target);
                    }
                    MatchType::PathPrefix => routes.prefixes.push((route.path.clone(), target)),
                }
            }
            routes
                .prefixes
                .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
            let routes = Arc::new(routes);
            for hostport in &edge.hostports {
                by_hostport.insert(hostport.to_ascii_lowercase(), routes.clone());
            }
        }
        RouteTable { by_hostport }
    }

    /// The route serving `path` on `hostport` (lower-case `host:port`).
    pub fn find(&self, hostport: &str, path: &str) -> Option<&Arc<RouteTarget>> {
        let edge = self.by_hostport.get(hostport)?;
        edge.exact.get(path).or_else(|| {
            edge.prefixes
                .iter()
                .find(|(prefix, _)| path.starts_with(prefix.as_str()))
                .map(|(_, t)| t)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Route, RouteBackend, Source};

    fn route(id: &str, match_type: MatchType, path: &str) -> Route {
        Route {
            id: id.into(),
            created_at: 0,
            match_type,
            path: path.into(),
            description: String::new(),
            metadata: String::new(),
            backend: Some(RouteBackend {
                enabled: true,
                backend_id: "b".into(),
            }),
        }
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let edge = Edge {
            id: "e".into(),
            description: String::new(),
            metadata: String::new(),
            created_at: 0,
            hostports: vec!["App.example:443".into()],
            routes: vec![
                route("root", MatchType::PathPrefix, "/"),
                route("api", MatchType::PathPrefix, "/api/"),
                route("exact", MatchType::ExactPath, "/api/health"),
            ],
            source: Source::Api,
        };
        let backend = StaticBackend {
            id: "b".into(),
            description: String::new(),
            metadata: String::new(),
            created_at: 0,
            address: "127.0.0.1:9".into(),
            tls: false,
            source: Source::Api,
        };
        let table = RouteTable::build(&[edge], &[backend], &Metrics::default());
        let id = |path: &str| table.find("app.example:443", path).map(|t| t.route_id.clone());
        assert_eq!(id("/api/health").as_deref(), Some("exact"));
        assert_eq!(id("/api/healthz").as_deref(), Some("api"));
        assert_eq!(id("/apix").as_deref(), Some("root"));
        assert!(table.find("other:443", "/").is_none());
    }
}
