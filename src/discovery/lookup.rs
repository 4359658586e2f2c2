//! One resolution of a name with hickory's resolver: the servers it stands for and how long the answer
//! holds, or why there is none.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig as HickoryConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::Hosts;
use hickory_resolver::TokioResolver;

use super::Found;
use crate::config::{Discover, ResolverConfig};

/// The largest weight an SRV answer may give a server (the config's own maximum).
const MAX_WEIGHT: u32 = 1000;

/// How often a name found in /etc/hosts is looked up again (the file is read anew each time).
const HOSTS_TTL: Duration = Duration::from_secs(1);

/// A stub resolver with the `[resolver]` settings; answers are not cached (each ask goes out).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    /// Read /etc/hosts first (no `[resolver] servers`), anew at every lookup so an edit is followed.
    hosts: bool,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

/// Why a name gave no set.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The name does not exist (NXDOMAIN) or has no record of the type asked.
    #[error("no such name or no address ({0})")]
    NoRecords(ResponseCode),
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// The name server answered with an error (SERVFAIL, REFUSED, ...).
    #[error("name server answered {0}")]
    Failed(ResponseCode),
    /// Anything else: no name server reachable, a malformed answer.
    #[error("{0}")]
    Other(String),
}

impl LookupError {
    /// Whether this error means the name has no servers now (rather than that we could not find out).
    pub fn empties(&self) -> bool {
        matches!(self, LookupError::NoRecords(_))
    }

    /// The `reason` label of `fulcrum_resolver_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            LookupError::NoRecords(ResponseCode::NXDomain) => "nxdomain",
            LookupError::NoRecords(_) => "no_records",
            LookupError::Timeout => "timeout",
            LookupError::Failed(ResponseCode::ServFail) => "servfail",
            LookupError::Failed(ResponseCode::Refused) => "refused",
            LookupError::Failed(_) => "error_response",
            LookupError::Other(_) => "other",
        }
    }
}

impl From<NetError> for LookupError {
    fn from(error: NetError) -> Self {
        match error {
            NetError::Dns(DnsError::NoRecordsFound(no)) => LookupError::NoRecords(no.response_code),
            NetError::Dns(DnsError::ResponseCode(code)) => LookupError::Failed(code),
            NetError::Timeout => LookupError::Timeout,
            other => LookupError::Other(other.to_string()),
        }
    }
}

impl Resolver {
    /// A resolver asking `settings.servers`, or those of /etc/resolv.conf (with /etc/hosts first).
    pub fn new(settings: &ResolverConfig) -> Result<Resolver, NetError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if settings.servers.is_empty() {
            TokioResolver::builder(provider)?
        } else {
            let servers = settings
                .servers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            TokioResolver::builder_with_config(HickoryConfig::from_name_servers(servers), provider)
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = settings.timeout;
        options.attempts = 1;
        options.cache_size = 0;
        options.ip_strategy = if settings.ipv6 {
            LookupIpStrategy::Ipv4AndIpv6
        } else {
            LookupIpStrategy::Ipv4Only
        };
        // Answers from a resolver on loopback (Docker's 127.0.0.11) must not be filtered.
        options.deny_answers.clear();
        // hickory reads /etc/hosts once; we read it at each lookup instead.
        options.use_hosts_file = ResolveHosts::Never;
        Ok(Resolver {
            inner: builder.build()?,
            hosts: settings.servers.is_empty(),
        })
    }

    /// The servers `name` stands for now, and how long the answer holds.
    pub async fn lookup(&self, name: &Discover) -> Result<(Vec<Found>, Duration), LookupError> {
        self.inner.clear_cache();
        if name.srv {
            self.srv(name).await
        } else {
            let (addrs, ttl) = match self.in_hosts_file(&name.query) {
                Some(addrs) => (addrs, HOSTS_TTL),
                None => {
                    let (addrs, until) = self.addresses(&name.query).await?;
                    (addrs, ttl(until))
                }
            };
            let found = addrs
                .into_iter()
                .map(|ip| Found {
                    addr: SocketAddr::new(ip, name.port),
                    weight: None,
                    backup: false,
                })
                .collect();
            Ok((found, ttl))
        }
    }

    /// The addresses /etc/hosts gives `host` now, when the resolver reads it and it names the host.
    fn in_hosts_file(&self, host: &str) -> Option<Vec<std::net::IpAddr>> {
        if !self.hosts {
            return None;
        }
        let hosts = Hosts::from_system().ok()?;
        let name = Name::from_ascii(host).ok()?;
        let mut types = vec![RecordType::A];
        if self.inner.options().ip_strategy != LookupIpStrategy::Ipv4Only {
            types.push(RecordType::AAAA);
        }
        let mut addrs: Vec<std::net::IpAddr> = types
            .into_iter()
            .filter_map(|kind| hosts.lookup_static_host(&Query::query(name.clone(), kind)))
            .flat_map(|lookup| {
                lookup
                    .answers()
                    .iter()
                    .filter_map(|record| record.data.ip_addr())
                    .collect::<Vec<_>>()
            })
            .collect();
        addrs.sort();
        addrs.dedup();
        (!addrs.is_empty()).then_some(addrs)
    }

    async fn addresses(&self, host: &str) -> Result<(Vec<std::net::IpAddr>, Instant), LookupError> {
        let answer = self.inner.lookup_ip(host).await?;
        let mut addrs: Vec<_> = answer.iter().collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(LookupError::NoRecords(ResponseCode::NoError));
        }
        Ok((addrs, answer.valid_until()))
    }

    /// SRV: each target and port a server; the lowest priority primaries, the others backups.
    async fn srv(&self, name: &Discover) -> Result<(Vec<Found>, Duration), LookupError> {
        let answer = self.inner.srv_lookup(name.query.as_str()).await?;
        let mut until = answer.valid_until();
        let records: Vec<_> = answer
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .collect();
        let Some(lowest) = records.iter().map(|srv| srv.priority).min() else {
            return Err(LookupError::NoRecords(ResponseCode::NoError));
        };
        let mut found = Vec::new();
        for srv in &records {
            // A target that does not resolve drops out; the others still count.
            let Ok((addrs, target_until)) = self.addresses(&srv.target.to_ascii()).await else {
                continue;
            };
            until = until.min(target_until);
            for ip in addrs {
                found.push(Found {
                    addr: SocketAddr::new(ip, srv.port),
                    weight: Some(u32::from(srv.weight).clamp(1, MAX_WEIGHT)),
                    backup: srv.priority > lowest,
                });
            }
        }
        found.sort();
        found.dedup_by(|a, b| a.addr == b.addr);
        Ok((found, ttl(until)))
    }
}

fn ttl(until: Instant) -> Duration {
    until.saturating_duration_since(Instant::now())
}
