//! Portcullis: an on-premises identity gateway in one binary.
//!
//! This crate owns the gateway: the config loader ([`config`]), durable state ([`store`]),
//! the edge reverse proxy ([`proxy`], [`routing`]), the console listener with the ngrok-shaped
//! management API ([`api`]), metrics, TLS, the admin socket, and the process lifecycle
//! ([`server`]). Data flows one way: listener -> router -> proxy or API handler -> store.
//! The store knows nothing about HTTP; the proxy never writes to the store.
#![deny(unsafe_code)]

pub mod accounts;
pub mod admin;
pub mod api;
pub mod auth;
pub mod cidr;
pub mod clock;
pub mod config;
pub mod echo;
pub mod identity;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod pages;
pub mod plugins;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use server::Gateway;
