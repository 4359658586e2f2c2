//! `redirect_to_https` on a plain listener: a 308 to the same host, path and query over HTTPS, as nginx's
//! `return 308 https://$host$request_uri`. ACME http-01 challenges pass through to the routes, so a
//! certificate can still be issued and renewed behind the redirect.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::{local_answer, LocalAnswer};
use crate::forward::body::ProxyBody;
use crate::message::error::ProxyError;

/// Path prefix of ACME http-01 challenges (RFC 8555 8.3).
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// The redirect answer for `request` (whose host is `host`), or `None` for an ACME challenge (which is
/// proxied as usual).
pub fn to_https(
    request: &Request<Incoming>,
    host: Option<&HeaderValue>,
    port: u16,
) -> Option<Response<ProxyBody>> {
    if request.uri().path().starts_with(ACME_CHALLENGE) {
        return None;
    }
    let host = host
        .and_then(|value| value.to_str().ok().map(str::to_owned))
        .and_then(|text| text.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return Some(local_answer(&ProxyError::BadHost));
    };
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{}{target}", host.host())
    } else {
        format!("https://{}:{port}{target}", host.host())
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return Some(local_answer(&ProxyError::BadHost));
    };
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(header::LOCATION, location);
    response.extensions_mut().insert(LocalAnswer);
    Some(response)
}
