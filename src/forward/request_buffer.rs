//! Request buffering (nginx `proxy_request_buffering`): the whole request body is read before a server is
//! picked, so a slow upload costs the servers nothing, `max_body_size` holds before anything reaches them,
//! and a retry can send the body again.

use std::sync::Arc;

use http_body_util::BodyExt;
use tracing::warn;

use crate::message::body::{BodyLimits, BodySlot, ClientFault, RequestBody};
use crate::message::error::ProxyError;
use crate::message::spool::{BufferSettings, SpoolWriter};

/// Reads the body in `slot` under `limits` into memory and a temp file, and gives back a slot that sends
/// it. When no temp file can be written, what was read is sent first and the rest streams from the
/// client. A body the client gets wrong is its error (413, 400, 408), answered before any server is
/// contacted.
pub async fn collect(
    slot: Arc<BodySlot>,
    limits: BodyLimits,
    settings: &BufferSettings,
    id: &str,
) -> Result<Arc<BodySlot>, ProxyError> {
    let hint = *slot.hint();
    let mut body = RequestBody::new(Some(Arc::clone(&slot)), limits);
    let mut spool = SpoolWriter::new(settings);
    loop {
        match body.frame().await {
            None => return Ok(BodySlot::spooled(spool.finish(), None, hint)),
            // Trailers of a chunked request are not forwarded (nginx drops them too).
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                if let Err(error) = spool.push(data) {
                    settings.warn_temp_failure("request", &error);
                    settings.request_gauges.fallback_temp_error.inc();
                    return Ok(BodySlot::spooled(spool.finish(), body.into_rest(), hint));
                }
            }
            Some(Err(_)) => {
                return Err(match slot.client_fault() {
                    Some(ClientFault::TooLarge) => {
                        warn!(id, limit = limits.max_size, "request body larger than max_body_size: 413 before any server was contacted");
                        ProxyError::BodyTooLarge
                    }
                    Some(ClientFault::TimedOut) => {
                        warn!(id, timeout = ?limits.timeout, "client_body_timeout passed while reading the request body");
                        ProxyError::BodyTimeout
                    }
                    Some(ClientFault::Malformed) | None => {
                        warn!(id, "the client's request body was malformed or cut short");
                        ProxyError::BadRequestBody
                    }
                });
            }
        }
    }
}
