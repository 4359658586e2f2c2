//! What every connection of one listener shares with the request path.

use std::sync::Arc;

use http::header::HeaderValue;

use crate::live::Live;

/// What every connection of one listener shares: kept once per listener (and config), not per connection.
#[derive(Debug)]
pub struct ListenerContext {
    pub(super) live: Arc<Live>,
    /// `http` or `https`, as the `X-Forwarded-Proto` value, made once.
    pub(super) proto_value: HeaderValue,
    pub(super) client_limits: crate::config::ClientLimits,
    pub(super) https_redirect: Option<u16>,
}

impl ListenerContext {
    /// A listener's context; `proto` is `http` or `https`, `client_limits` its request-target length and
    /// request body timeout, `https_redirect` the port every request is redirected to
    /// (`redirect_to_https`), when set.
    pub fn new(
        live: Arc<Live>,
        proto: &'static str,
        client_limits: crate::config::ClientLimits,
        https_redirect: Option<u16>,
    ) -> Self {
        Self {
            live,
            proto_value: HeaderValue::from_static(proto),
            client_limits,
            https_redirect,
        }
    }

    /// The listener's client limits.
    pub fn client_limits(&self) -> &crate::config::ClientLimits {
        &self.client_limits
    }

    /// Whether this context was made from these settings (a reload may have changed them).
    pub fn is_for(
        &self,
        proto: &'static str,
        client_limits: &crate::config::ClientLimits,
        https_redirect: Option<u16>,
    ) -> bool {
        self.proto_value == proto
            && self.client_limits == *client_limits
            && self.https_redirect == https_redirect
    }
}
