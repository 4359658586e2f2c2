//! The request head our upstream client writes (`proxy::h1codec::encode_head` with `request_framing`)
//! from any header fields: it parses back (httparse) as one request with the same method, target and
//! fields, framed exactly one way: our `Transfer-Encoding: chunked`, or the one `Content-Length`, or
//! no body.
#![no_main]

use arbitrary::Arbitrary;
use fulcrum::upstream_client::h1codec::{encode_head, request_framing, RequestFraming};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    has_body: bool,
    fields: Vec<(String, Vec<u8>)>,
    target: String,
}

fuzz_target!(|input: Input| {
    let mut headers = http::HeaderMap::new();
    for (name, value) in input.fields.iter().take(32) {
        let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        // The server side removed hop-by-hop fields and refused bad framing before we get here.
        if name == http::header::TRANSFER_ENCODING || name == http::header::CONNECTION {
            continue;
        }
        if name == http::header::CONTENT_LENGTH
            && (headers.contains_key(&name)
                || value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .is_none())
        {
            continue;
        }
        headers.append(name, value);
    }
    let Ok(target) = http::uri::PathAndQuery::try_from(format!("/{}", input.target).as_str())
    else {
        return;
    };
    let framing = request_framing(input.has_body, &headers);
    let mut out = Vec::new();
    encode_head(
        &mut out,
        &http::Method::POST,
        target.as_str(),
        &headers,
        None,
        framing,
    );
    let mut parsed_fields = [httparse::EMPTY_HEADER; 80];
    let mut request = httparse::Request::new(&mut parsed_fields);
    let Ok(httparse::Status::Complete(length)) = request.parse(&out) else {
        panic!(
            "our request head does not parse: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    assert_eq!(length, out.len(), "one head, nothing after it");
    assert_eq!(request.method, Some("POST"));
    assert_eq!(request.path, Some(target.as_str()));
    let count = |name: &str| {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    match framing {
        RequestFraming::Empty | RequestFraming::Length(_) => {
            assert_eq!(count("transfer-encoding"), 0)
        }
        RequestFraming::Chunked => {
            assert_eq!(count("transfer-encoding"), 1);
            assert_eq!(count("content-length"), 0);
        }
    }
    if let RequestFraming::Length(_) = framing {
        assert_eq!(count("content-length"), 1);
    }
});
