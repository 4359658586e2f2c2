//! Validation of the TLS keys: listener certificates (read and checked now, so a bad file is a config error
//! that names it) and the TLS settings of `https://` upstream servers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::error::ConfigError;
use super::file::{ListenerTlsFile, UpstreamFile, UpstreamProtocol};
use super::validate::Validator;
use super::values::ConfigDuration;
use super::ListenerTls;
use crate::tls::{self, UpstreamTls};

/// Default time a client has to finish its TLS handshake.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `session_ticket_lifetime` default: an hour (nginx keeps the session cache 5 minutes; rustls kept
/// tickets 12 hours).
const DEFAULT_SESSION_TICKET_LIFETIME: Duration = Duration::from_secs(3600);

impl Validator<'_> {
    /// A path from the config, relative to the config file's directory (as nginx reads paths relative to
    /// its configuration prefix).
    pub(super) fn config_relative(&self, path: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    pub(super) fn listener_tls(
        &self,
        i: usize,
        file: &ListenerTlsFile,
        listener_level_lifetime: Option<&Spanned<ConfigDuration>>,
    ) -> Result<Arc<ListenerTls>, ConfigError> {
        let key = |k: &str| format!("listener[{i}].tls.{k}");
        if file.certificates.get_ref().is_empty() {
            return Err(self.err(
                Some(file.certificates.span()),
                key("certificates"),
                "a TLS listener needs at least one [[listener.tls.certificates]] with cert and key",
            ));
        }
        let mut certificates = Vec::new();
        for (c, cert) in file.certificates.get_ref().iter().enumerate() {
            let names = match &cert.server_names {
                Some(names) => Some(
                    self.server_names(names, &key(&format!("certificates[{c}].server_names")))?,
                ),
                None => None,
            };
            let loaded = tls::load_certified_key(
                &self.config_relative(cert.cert.get_ref()),
                &self.config_relative(cert.key.get_ref()),
                names.as_deref(),
            )
            .map_err(|why| {
                self.err(
                    Some(cert.cert.span()),
                    key(&format!("certificates[{c}]")),
                    why,
                )
            })?;
            certificates.push(loaded);
        }
        let session_ticket_lifetime = match file
            .session_ticket_lifetime
            .as_ref()
            .or(listener_level_lifetime)
        {
            Some(d) if d.get_ref().0 < Duration::from_secs(2) => {
                return Err(self.err(
                    Some(d.span()),
                    key("session_ticket_lifetime"),
                    "must be at least 2s (the ticket key changes every half of it)",
                ))
            }
            Some(d) => d.get_ref().0,
            None => DEFAULT_SESSION_TICKET_LIFETIME,
        };
        let server_config = tls::listener_config(&certificates, session_ticket_lifetime)
            .map_err(|why| self.err(Some(file.certificates.span()), key("certificates"), why))?;
        let handshake_timeout = match &file.handshake_timeout {
            Some(d) if d.get_ref().0.is_zero() => {
                return Err(self.err(
                    Some(d.span()),
                    key("handshake_timeout"),
                    "must be greater than zero",
                ))
            }
            Some(d) => d.get_ref().0,
            None => DEFAULT_HANDSHAKE_TIMEOUT,
        };
        Ok(Arc::new(ListenerTls {
            server_config,
            certificates,
            handshake_timeout,
            session_ticket_lifetime,
        }))
    }

    fn server_names(
        &self,
        names: &Spanned<Vec<String>>,
        key: &str,
    ) -> Result<Vec<String>, ConfigError> {
        names
            .get_ref()
            .iter()
            .map(|name| {
                let lower = name.to_ascii_lowercase();
                let bare = lower.strip_prefix("*.").unwrap_or(&lower);
                let valid = !bare.is_empty()
                    && !bare.starts_with('.')
                    && !bare.ends_with('.')
                    && bare
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if valid {
                    Ok(lower)
                } else {
                    Err(self.err(
                        Some(names.span()),
                        key,
                        format!("`{name}` is not a host name; write example.com or *.example.com"),
                    ))
                }
            })
            .collect()
    }

    /// The protocol and TLS settings of a pool; TLS keys on a pool without `https://` servers are
    /// ignored with a warning.
    pub(super) fn upstream_tls(
        &self,
        name: &str,
        file: &UpstreamFile,
        any_tls: bool,
    ) -> Result<(UpstreamProtocol, Option<Arc<UpstreamTls>>), ConfigError> {
        let key = |k: &str| format!("upstream.{name}.{k}");
        let protocol = file
            .protocol
            .as_ref()
            .map_or(UpstreamProtocol::Http1, |p| *p.get_ref());
        if protocol == UpstreamProtocol::H2c && any_tls {
            return Err(self.err(
                file.protocol.as_ref().map(Spanned::span),
                key("protocol"),
                "h2c is HTTP/2 without TLS, but the pool has https:// servers; use protocol = \"h2\"",
            ));
        }
        let verify = file.tls_verify.as_ref().is_none_or(|v| *v.get_ref());
        if !any_tls {
            let set = [
                file.ca_file.as_ref().map(|s| ("ca_file", s.span())),
                file.tls_verify.as_ref().map(|s| ("tls_verify", s.span())),
                file.tls_server_name
                    .as_ref()
                    .map(|s| ("tls_server_name", s.span())),
            ];
            for (k, span) in set.into_iter().flatten() {
                self.warn(self.err(
                    Some(span),
                    key(k),
                    "applies to https:// servers only and the pool has none; ignored",
                ));
            }
            return Ok((protocol, None));
        }
        if let Some(flag) = file.tls_verify.as_ref().filter(|_| !verify) {
            self.warn(self.err(
                Some(flag.span()),
                key("tls_verify"),
                "is false: the servers' certificates are NOT verified, so anyone on the path can impersonate them",
            ));
        }
        let ca_file = file
            .ca_file
            .as_ref()
            .map(|p| (self.config_relative(p.get_ref()), p.span()));
        let server_name = file.tls_server_name.as_ref();
        let tls = UpstreamTls::new(
            ca_file.as_ref().map(|(path, _)| path.as_path()),
            verify,
            server_name.map(|n| n.get_ref().as_str()),
        )
        .map_err(|why| {
            let (k, span) = match (&ca_file, server_name) {
                (_, Some(n)) if why.contains("not a host name") => {
                    ("tls_server_name", Some(n.span()))
                }
                (Some((_, span)), _) => ("ca_file", Some(span.clone())),
                (None, _) => ("ca_file", None),
            };
            self.err(span, key(k), why)
        })?;
        Ok((protocol, Some(Arc::new(tls))))
    }
}
