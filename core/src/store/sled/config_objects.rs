//! Static backends and HTTPS edges in sled. Every write goes through [`SledStore::write_config`]:
//! read the config generation, scan, check the rules over the scan, then commit only if the
//! generation is unchanged (bumping it), else scan again.

use super::{abort, codec, transaction_error, Abort, SledStore};
use crate::model::{Edge, Source, StaticBackend};
use crate::store::{Change, ConfigObjectSet, ConfigObjects, Conflict, Page, StoreError};
use async_trait::async_trait;
use sled::transaction::Transactional;

const CONFIG_GENERATION: &[u8] = b"config_generation";

/// What one config write stores and removes.
#[derive(Default)]
struct ConfigWrites {
    put_backends: Vec<StaticBackend>,
    remove_backends: Vec<String>,
    put_edges: Vec<Edge>,
    remove_edges: Vec<String>,
}

impl ConfigWrites {
    fn is_empty(&self) -> bool {
        self.put_backends.is_empty()
            && self.remove_backends.is_empty()
            && self.put_edges.is_empty()
            && self.remove_edges.is_empty()
    }
}

/// The first host:port of `edge` another edge (not among `replaced`) serves.
fn hostport_taken(edge: &Edge, edges: &[Edge], replaced: &dyn Fn(&Edge) -> bool) -> Result<(), Conflict> {
    for hostport in &edge.hostports {
        if let Some(other) = edges
            .iter()
            .find(|e| e.id != edge.id && !replaced(e) && e.hostports.contains(hostport))
        {
            return Err(Conflict::HostportTaken {
                hostport: hostport.clone(),
                edge_id: other.id.clone(),
            });
        }
    }
    Ok(())
}

/// A backend a route of `edge` names that is missing; routes unchanged from `before` are not
/// checked (a reload may have removed their config backend).
fn backend_missing(edge: &Edge, before: Option<&Edge>, backends: &[StaticBackend]) -> Result<(), Conflict> {
    for route in &edge.routes {
        let Some(wanted) = &route.backend else { continue };
        let unchanged = before.is_some_and(|b| b.routes.iter().any(|r| r.id == route.id && r.backend == route.backend));
        if !unchanged && !backends.iter().any(|b| b.id == wanted.backend_id) {
            return Err(Conflict::BackendMissing {
                backend_id: wanted.backend_id.clone(),
            });
        }
    }
    Ok(())
}

impl SledStore {
    /// Plans a write over a consistent scan of every backend and edge and commits it if no
    /// other config write came between; answers what the plan answered.
    async fn write_config<T>(
        &self,
        plan: impl Fn(&[StaticBackend], &[Edge]) -> Result<(ConfigWrites, T), StoreError>,
    ) -> Result<T, StoreError> {
        loop {
            let generation = self.meta().get(CONFIG_GENERATION)?;
            let (writes, answer) = plan(&self.backends.all()?, &self.edges.all()?)?;
            if writes.is_empty() {
                return Ok(answer);
            }
            let backends = writes
                .put_backends
                .iter()
                .map(|b| Ok((b.id.clone(), codec::encode(b)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let edges = writes
                .put_edges
                .iter()
                .map(|e| Ok((e.id.clone(), codec::encode(e)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let next = generation
                .as_ref()
                .and_then(|g| <[u8; 8]>::try_from(g.as_ref()).ok())
                .map_or(0, u64::from_be_bytes)
                .wrapping_add(1);
            let result = (self.meta(), &self.backends.tree, &self.edges.tree).transaction(|(meta, btree, etree)| {
                if meta.get(CONFIG_GENERATION)? != generation {
                    return abort(Abort::Retry);
                }
                for id in &writes.remove_backends {
                    btree.remove(id.as_bytes())?;
                }
                for id in &writes.remove_edges {
                    etree.remove(id.as_bytes())?;
                }
                for (id, bytes) in &backends {
                    btree.insert(id.as_bytes(), bytes.as_slice())?;
                }
                for (id, bytes) in &edges {
                    etree.insert(id.as_bytes(), bytes.as_slice())?;
                }
                meta.insert(CONFIG_GENERATION, &next.to_be_bytes())?;
                Ok(())
            });
            match result {
                Ok(()) => {
                    self.feed.publish(Change::ConfigObjects);
                    self.flush().await?;
                    return Ok(answer);
                }
                Err(e) => {
                    if let Some(error) = transaction_error(e) {
                        return Err(error);
                    }
                }
            }
        }
    }
}

#[async_trait]
impl ConfigObjects for SledStore {
    async fn backend(&self, id: &str) -> Result<Option<StaticBackend>, StoreError> {
        self.backends.find(id)
    }

    async fn backends_page(&self, before_id: Option<&str>, limit: usize) -> Result<Page<StaticBackend>, StoreError> {
        self.backends.page(before_id, limit)
    }

    async fn all_backends(&self) -> Result<Vec<StaticBackend>, StoreError> {
        self.backends.all()
    }

    async fn create_backend(&self, backend: &StaticBackend) -> Result<(), StoreError> {
        self.write_config(|backends, _| {
            if backends.iter().any(|b| b.id == backend.id) {
                return Err(Conflict::Changed.into());
            }
            Ok((
                ConfigWrites {
                    put_backends: vec![backend.clone()],
                    ..ConfigWrites::default()
                },
                (),
            ))
        })
        .await
    }

    async fn update_backend(&self, expected: &StaticBackend, new: &StaticBackend) -> Result<(), StoreError> {
        self.write_config(|backends, _| {
            match backends.iter().find(|b| b.id == expected.id) {
                None => return Err(Conflict::Missing.into()),
                Some(current) if current != expected || new.id != expected.id => return Err(Conflict::Changed.into()),
                Some(_) => {}
            }
            Ok((
                ConfigWrites {
                    put_backends: vec![new.clone()],
                    ..ConfigWrites::default()
                },
                (),
            ))
        })
        .await
    }

    async fn delete_backend(&self, id: &str) -> Result<bool, StoreError> {
        self.write_config(|backends, edges| {
            if !backends.iter().any(|b| b.id == id) {
                return Ok((ConfigWrites::default(), false));
            }
            let route_ids: Vec<String> = edges
                .iter()
                .flat_map(|e| e.routes.iter())
                .filter(|r| r.backend.as_ref().is_some_and(|b| b.backend_id == id))
                .map(|r| r.id.clone())
                .collect();
            if !route_ids.is_empty() {
                return Err(Conflict::BackendInUse {
                    backend_id: id.to_string(),
                    route_ids,
                }
                .into());
            }
            Ok((
                ConfigWrites {
                    remove_backends: vec![id.to_string()],
                    ..ConfigWrites::default()
                },
                true,
            ))
        })
        .await
    }

    async fn edge(&self, id: &str) -> Result<Option<Edge>, StoreError> {
        self.edges.find(id)
    }

    async fn edges_page(&self, before_id: Option<&str>, limit: usize) -> Result<Page<Edge>, StoreError> {
        self.edges.page(before_id, limit)
    }

    async fn all_edges(&self) -> Result<Vec<Edge>, StoreError> {
        self.edges.all()
    }

    async fn create_edge(&self, edge: &Edge) -> Result<(), StoreError> {
        self.write_config(|backends, edges| {
            if edges.iter().any(|e| e.id == edge.id) {
                return Err(Conflict::Changed.into());
            }
            hostport_taken(edge, edges, &|_| false)?;
            backend_missing(edge, None, backends)?;
            Ok((
                ConfigWrites {
                    put_edges: vec![edge.clone()],
                    ..ConfigWrites::default()
                },
                (),
            ))
        })
        .await
    }

    async fn update_edge(&self, expected: &Edge, new: &Edge) -> Result<(), StoreError> {
        self.write_config(|backends, edges| {
            match edges.iter().find(|e| e.id == expected.id) {
                None => return Err(Conflict::Missing.into()),
                Some(current) if current != expected || new.id != expected.id => return Err(Conflict::Changed.into()),
                Some(_) => {}
            }
            hostport_taken(new, edges, &|_| false)?;
            backend_missing(new, Some(expected), backends)?;
            Ok((
                ConfigWrites {
                    put_edges: vec![new.clone()],
                    ..ConfigWrites::default()
                },
                (),
            ))
        })
        .await
    }

    async fn delete_edge(&self, id: &str) -> Result<bool, StoreError> {
        self.write_config(|_, edges| {
            if !edges.iter().any(|e| e.id == id) {
                return Ok((ConfigWrites::default(), false));
            }
            Ok((
                ConfigWrites {
                    remove_edges: vec![id.to_string()],
                    ..ConfigWrites::default()
                },
                true,
            ))
        })
        .await
    }

    async fn replace_config_objects(&self, set: ConfigObjectSet<'_>) -> Result<(), StoreError> {
        self.write_config(|backends, edges| {
            let declared = |source: &Source| source.config_file().is_some();
            for edge in set.edges {
                // Config edges replace each other; only the API's are in the way.
                hostport_taken(edge, edges, &|e| declared(&e.source))?;
            }
            let keep = |id: &str| set.backends.iter().any(|b| b.id == id) || set.edges.iter().any(|e| e.id == id);
            Ok((
                ConfigWrites {
                    put_backends: set.backends.to_vec(),
                    remove_backends: backends
                        .iter()
                        .filter(|b| declared(&b.source) && !keep(&b.id))
                        .map(|b| b.id.clone())
                        .collect(),
                    put_edges: set.edges.to_vec(),
                    remove_edges: edges
                        .iter()
                        .filter(|e| declared(&e.source) && !keep(&e.id))
                        .map(|e| e.id.clone())
                        .collect(),
                },
                (),
            ))
        })
        .await
    }

    async fn config_snapshot(&self) -> Result<(Vec<StaticBackend>, Vec<Edge>), StoreError> {
        loop {
            let generation = self.meta().get(CONFIG_GENERATION)?;
            let snapshot = (self.backends.all()?, self.edges.all()?);
            if self.meta().get(CONFIG_GENERATION)? == generation {
                return Ok(snapshot);
            }
        }
    }
}
