//! TLS on both sides of the edge: a self-signed edge certificate kept in the data dir (served
//! over HTTP/2 via ALPN and over HTTP/1.1), and TLS upstreams verified against a configured CA.

use crate::harness::{TestGateway, LISTENERS};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(trusted_pem: &Path, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(trusted_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    trusted_pem: &Path,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(trusted_pem, alpn));
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn self_signed_edge_serves_http2_and_http1_over_tls() {
    let config = LISTENERS.replace(
        "[listeners.console]",
        "[listeners.edge.tls]\nself_signed = true\n[listeners.console]",
    );
    let gw = TestGateway::start_with(&config).await;
    let upstream = crate::harness::Upstream::start().await;
    gw.create_route_to(upstream.addr, "localhost:443").await;
    let cert = gw.dir.path().join("data/tls/edge-self-signed.crt");
    assert!(cert.is_file(), "the self-signed certificate is kept in the data dir");

    // HTTP/2, negotiated by ALPN; no port in :authority means 443 for an https listener.
    let tls = tls_connect(gw.gateway.edge_addr, &cert, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::get("https://localhost/h2")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(seen["path"], "/h2");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");

    // HTTP/1.1 over TLS.
    let tls = tls_connect(gw.gateway.edge_addr, &cert, b"http/1.1").await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let request = Request::get("/h1")
        .header("host", "localhost")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);

    // The same certificate is used after a restart.
    let before = std::fs::read(&cert).unwrap();
    let TestGateway { gateway, dir, .. } = gw;
    gateway.shutdown().await;
    let gw = TestGateway::start_in(dir).await;
    assert_eq!(
        std::fs::read(gw.dir.path().join("data/tls/edge-self-signed.crt")).unwrap(),
        before
    );
    gw.stop().await;
}

/// A TLS upstream for `localhost`, with a certificate signed by a CA written to `ca_path`.
async fn tls_upstream(ca_path: &Path) -> std::net::SocketAddr {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(ca_path, ca.pem()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = json!({"tls_upstream": true, "path": req.uri().path()}).to_string();
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn tls_upstreams_are_verified_against_the_configured_ca() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("internal-ca.pem");
    let upstream = tls_upstream(&ca).await;
    let backend = json!({"address": format!("localhost:{}", upstream.port()), "tls": {"enabled": true}});

    let trusting = TestGateway::start(&format!("[proxy]\nupstream_ca_file = \"{}\"\n", ca.display())).await;
    let untrusting = TestGateway::start("").await;
    for (gw, expected) in [(&trusting, 200), (&untrusting, 502)] {
        let b = gw
            .api(Method::POST, "/backends/static", Some(backend.clone()))
            .await
            .json();
        assert_eq!(b["tls"]["enabled"], true);
        let edge = gw
            .api(
                Method::POST,
                "/edges/https",
                Some(json!({"hostports": ["tls-up.test:80"]})),
            )
            .await
            .json();
        let route = json!({"match_type": "path_prefix", "match": "/", "backend": {"backend_id": b["id"]}});
        let created = gw
            .api(
                Method::POST,
                &format!("/edges/https/{}/routes", edge["id"].as_str().unwrap()),
                Some(route),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
        let reply = gw.edge_get("tls-up.test", "/secure").await;
        assert_eq!(reply.status, expected, "{}", reply.body);
        if expected == 200 {
            assert_eq!(reply.json()["tls_upstream"], true);
        }
    }
    trusting.stop().await;
    untrusting.stop().await;
}

#[tokio::test]
async fn the_session_cookie_is_secure_on_an_https_edge() {
    let upstream = crate::harness::Upstream::start().await;
    let config = format!(
        "{}[backends.up]\naddress = \"{}\"\n[edges.app]\nhostports = [\"localhost:443\"]\n[[edges.app.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/\"\nbackend = \"up\"\n[edges.app.routes.auth]\nplugin = \"testlogin\"\n",
        LISTENERS.replace("[listeners.console]", "[listeners.edge.tls]\nself_signed = true\n[listeners.console]"),
        upstream.addr
    );
    let gw = TestGateway::start_full(&config, crate::test_plugin::options()).await;
    let cert = gw.dir.path().join("data/tls/edge-self-signed.crt");
    let tls = tls_connect(gw.gateway.edge_addr, &cert, b"http/1.1").await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let get = |path: String| {
        Request::get(path)
            .header("host", "localhost")
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    let first = sender.send_request(get("/".into())).await.unwrap();
    assert_eq!(first.status(), 303);
    let location = first.headers()["location"].to_str().unwrap().to_string();
    let done = sender
        .send_request(get(format!("{location}&user=alice")))
        .await
        .unwrap();
    let cookie = done.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("__Host-portcullis.session=") && cookie.ends_with("; HttpOnly; SameSite=Lax; Secure"),
        "{cookie}"
    );
    gw.stop().await;
}
