//! Fulcrum: a reverse-proxy load balancer.
//!
//! The binary (`src/main.rs`) parses the command line and calls into this library; tests, examples and
//! benches drive the same code.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod discovery;
pub mod forward;
pub mod health;
pub mod import_nginx;
pub mod live;
pub mod message;
pub mod metrics;
pub mod probe;
pub mod ratelimit;
pub mod request;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod upstream_client;
pub mod worker;

pub use config::{Config, ConfigError};
pub use server::{start, RunningProxy};
