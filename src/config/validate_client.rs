//! Validation of a listener's client keys: timeouts for slow and idle clients, connection and request
//! counts, the request-target length.

use std::time::Duration;

use toml::Spanned;

use super::error::ConfigError;
use super::file::ListenerFile;
use super::validate::Validator;
use super::values::ConfigDuration;
use super::ClientLimits;

impl Validator<'_> {
    /// The client limits of listener `i`, defaults (nginx's) for keys not set.
    pub(super) fn client_limits(
        &self,
        i: usize,
        file: &ListenerFile,
    ) -> Result<ClientLimits, ConfigError> {
        let mut limits = ClientLimits::default();
        let timeouts = [
            (
                &file.client_header_timeout,
                "client_header_timeout",
                &mut limits.header_timeout,
            ),
            (
                &file.client_body_timeout,
                "client_body_timeout",
                &mut limits.body_timeout,
            ),
            (&file.send_timeout, "send_timeout", &mut limits.send_timeout),
            (
                &file.lingering_time,
                "lingering_time",
                &mut limits.lingering_time,
            ),
            (
                &file.lingering_timeout,
                "lingering_timeout",
                &mut limits.lingering_timeout,
            ),
        ];
        for (value, key, slot) in timeouts {
            if let Some(value) = value {
                *slot = self.timeout(i, key, value, false)?;
            }
        }
        if let Some(value) = &file.keepalive_timeout {
            limits.keepalive_timeout = self.timeout(i, "keepalive_timeout", value, true)?;
        }
        if let Some(requests) = &file.keepalive_requests {
            limits.keepalive_requests = *requests.get_ref();
            if limits.keepalive_requests == 0 {
                return Err(self.err(
                    Some(requests.span()),
                    format!("listener[{i}].keepalive_requests"),
                    "must be at least 1 (keepalive_timeout = 0 turns keep-alive off)",
                ));
            }
        }
        if let Some(max) = &file.max_connections {
            if *max.get_ref() == 0 {
                return Err(self.err(
                    Some(max.span()),
                    format!("listener[{i}].max_connections"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
            limits.max_connections = Some(*max.get_ref());
        }
        if let Some(size) = &file.max_uri_size {
            limits.max_uri_size = self.size_between(i, "max_uri_size", size, 256, "256")? as usize;
        }
        Ok(limits)
    }

    /// A timeout up to a day; zero only where `zero_allowed` (it then means "off").
    fn timeout(
        &self,
        i: usize,
        key: &str,
        value: &Spanned<ConfigDuration>,
        zero_allowed: bool,
    ) -> Result<Duration, ConfigError> {
        let duration = value.get_ref().0;
        let why = if duration.is_zero() && !zero_allowed {
            "must be more than 0"
        } else if duration > Duration::from_secs(86_400) {
            "must be at most 1d"
        } else {
            return Ok(duration);
        };
        Err(self.err(Some(value.span()), format!("listener[{i}].{key}"), why))
    }
}
