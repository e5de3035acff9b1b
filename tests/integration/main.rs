//! The one integration-test binary: the real gateway in-process on free ports, in front of a
//! real upstream, driven by real clients (hyper, tungstenite, ngrok's Python API client, the
//! `portcullis` binary itself). One module per area.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

mod api;
mod architecture;
mod browser;
mod cli;
mod config;
mod edge_attacks;
mod ngrok_client;
mod oidc;
mod oidc_attacks;
mod plugins;
mod provisioning;
mod proxy;
mod saml;
mod saml_attacks;
mod saml_metadata;
mod sessions;
mod test_plugin;
mod tls;
mod upstreams;
