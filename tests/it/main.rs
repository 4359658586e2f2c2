//! Integration tests over real sockets: real backends, the real proxy, a real client.

mod harness;
mod pki;

mod admin;
mod backup_and_failover;
mod cli;
mod client_limits;
mod conformance;
mod desync_vectors;
mod discovery;
mod error_answers;
mod failing_upstreams;
mod forwarding;
mod h2_abuse;
mod health;
mod import_nginx;
mod least_time;
mod observability;
mod overload;
mod packaging;
mod pipelining;
mod properties;
mod ratelimit;
mod ratelimit_fleet;
mod reload;
mod route_rules;
mod smuggling;
mod status_page;
mod strategies;
mod tls;
mod tunnels;
mod upgrade;
mod upstream_pool;
mod upstream_timeouts;
mod upstream_tls;
mod upstream_wire;
