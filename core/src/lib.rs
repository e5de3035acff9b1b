//! Portcullis: an on-premises identity gateway in one binary.
//!
//! This crate owns the gateway: the config loader ([`config`]) and its application
//! ([`configure`]), durable state ([`store`]), the edge reverse proxy ([`proxy`], [`routing`],
//! [`upstream`]) with its session gate ([`gate`]) and sign-in ([`signin`], [`modules`]), the
//! console listener with the ngrok-shaped management API ([`api`]), metrics, TLS, the admin
//! socket, and the composition root and process lifecycle ([`server`]). Data flows one way:
//! listener -> router -> proxy or API handler -> store. The store knows nothing about HTTP;
//! the proxy never writes to the store. Derived state (the route table, the session index)
//! follows the store's change feed ([`derived`]), never the writer.
#![deny(unsafe_code)]

pub mod accounts;
pub mod admin;
pub mod api;
pub mod cidr;
pub mod clock;
pub mod config;
pub mod configure;
pub mod cookies;
pub mod derived;
pub mod echo;
pub mod egress;
pub mod gate;
pub mod identity;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod modules;
pub mod pages;
pub mod plugins;
pub mod provisioning;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod sessions;
pub mod signin;
pub mod state;
pub mod store;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use server::Gateway;
