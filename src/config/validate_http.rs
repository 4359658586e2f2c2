//! Validation of a listener's HTTP keys: header and stream limits, and `redirect_to_https`.

use toml::Spanned;

use super::error::ConfigError;
use super::file::{ListenerFile, RedirectToHttps};
use super::validate::Validator;
use super::values::ConfigSize;
use super::HttpLimits;

impl Validator<'_> {
    /// The HTTP/1.1 and HTTP/2 limits of listener `i`, defaults for keys not set.
    pub(super) fn http_limits(
        &self,
        i: usize,
        file: &ListenerFile,
    ) -> Result<HttpLimits, ConfigError> {
        let mut limits = HttpLimits::default();
        if let Some(size) = &file.http1_max_header_size {
            // hyper's smallest read buffer is 8 KiB.
            limits.http1_max_header_size =
                self.size_between(i, "http1_max_header_size", size, 8 * 1024, "8k")? as usize;
        }
        if let Some(size) = &file.http2_max_header_size {
            limits.http2_max_header_size =
                self.size_between(i, "http2_max_header_size", size, 1024, "1k")? as u32;
        }
        if let Some(streams) = &file.http2_max_concurrent_streams {
            if *streams.get_ref() == 0 {
                return Err(self.err(
                    Some(streams.span()),
                    format!("listener[{i}].http2_max_concurrent_streams"),
                    "must be at least 1",
                ));
            }
            limits.http2_max_concurrent_streams = *streams.get_ref();
        }
        Ok(limits)
    }

    /// A size from `min` bytes (written `min_text`) to 4g.
    pub(super) fn size_between(
        &self,
        i: usize,
        key: &str,
        size: &Spanned<ConfigSize>,
        min: u64,
        min_text: &str,
    ) -> Result<u64, ConfigError> {
        let bytes = size.get_ref().0;
        if (min..=u64::from(u32::MAX)).contains(&bytes) {
            return Ok(bytes);
        }
        Err(self.err(
            Some(size.span()),
            format!("listener[{i}].{key}"),
            format!("must be from {min_text} to 4g"),
        ))
    }

    /// The port `redirect_to_https` sends listener `i`'s clients to, if it is on; an error on a TLS
    /// listener, where the redirect would loop.
    pub(super) fn redirect_to_https(
        &self,
        i: usize,
        file: &ListenerFile,
        terminates_tls: bool,
    ) -> Result<Option<u16>, ConfigError> {
        let Some(redirect) = &file.redirect_to_https else {
            return Ok(None);
        };
        let why = match *redirect.get_ref() {
            RedirectToHttps::Enabled(false) => return Ok(None),
            _ if terminates_tls => {
                "is for plain listeners; this one already terminates TLS (the redirect would loop)"
            }
            RedirectToHttps::Enabled(true) => return Ok(Some(443)),
            RedirectToHttps::Port(0) => "write true (to port 443) or the HTTPS port, e.g. 8443",
            RedirectToHttps::Port(port) => return Ok(Some(port)),
        };
        Err(self.err(
            Some(redirect.span()),
            format!("listener[{i}].redirect_to_https"),
            why,
        ))
    }
}
