//! The request and its failure as every stage of the path holds them: the request body shared across
//! attempts, how far it has gone toward its server, the buffers it may be spooled to, the hop-by-hop and
//! forwarding header rules, and the proxy's error kinds. Below the request policy, the forwarding loop
//! and the upstream client, which all use it.

pub mod body;
pub mod error;
pub mod headers;
pub mod progress;
pub mod spool;
