//! Request IDs: an incoming `X-Request-Id` is kept when its value is sane, otherwise one is made; the ID
//! goes to the upstream, back to the client, and into every log line about the request.

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};

/// The header carrying the ID.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming ID kept.
const MAX_LEN: usize = 128;

/// Gives the request its ID and returns it: the client's `X-Request-Id` when sane (1 to 128 of
/// `A-Z a-z 0-9 - _ . : /`; the first, when there are several), else 32 random hex digits. The request
/// leaves with that one value.
pub fn assign(headers: &mut HeaderMap) -> HeaderValue {
    // One lookup for the read and the write.
    match headers.entry(&X_REQUEST_ID) {
        Entry::Occupied(mut entry) => {
            let id = if is_sane(entry.get().as_bytes()) {
                entry.get().clone()
            } else {
                made()
            };
            entry.insert(id.clone());
            id
        }
        Entry::Vacant(entry) => entry.insert(made()).clone(),
    }
}

/// IDs made per block of [`IDS`].
const IDS_PER_BLOCK: usize = 64;

thread_local! {
    /// Where this thread's new IDs are written: each is a slice of a shared block, so an ID, and each
    /// clone of it (the request's header, the response's, the log's), costs no allocation of its own;
    /// one block per 64 IDs. A block lives until the last request with an ID from it is done.
    static IDS: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}

/// The two lowercase hex digits of every byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// A new ID: 32 random hex digits.
fn made() -> HeaderValue {
    // Hex digits written by hand, two per byte from a table: `format!` costs more than the rest of
    // making the ID, and a digit at a time (shifting a u128) more than the table.
    let random = fastrand::u128(..).to_be_bytes();
    let mut id = [0u8; 32];
    for (pair, byte) in id.chunks_exact_mut(2).zip(random) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    let shared = IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if ids.capacity() - ids.len() < id.len() {
            *ids = bytes::BytesMut::with_capacity(id.len() * IDS_PER_BLOCK);
        }
        ids.extend_from_slice(&id);
        ids.split().freeze()
    });
    HeaderValue::from_maybe_shared(shared).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn is_sane(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LEN
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                &X_REQUEST_ID,
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        headers
    }

    #[test]
    fn sane_ids_are_kept() {
        let mut headers = with(&["abc-123_x.y:z"]);
        assert_eq!(assign(&mut headers), "abc-123_x.y:z");
        assert_eq!(headers.get_all(&X_REQUEST_ID).iter().count(), 1);
        // Of several, the first, and only it goes on.
        let mut headers = with(&["first", "second"]);
        assert_eq!(assign(&mut headers), "first");
        let sent: Vec<_> = headers.get_all(&X_REQUEST_ID).iter().collect();
        assert_eq!(sent, ["first"]);
    }

    #[test]
    fn odd_or_missing_ids_are_replaced() {
        for odd in ["", "has space", "semi;colon", &"x".repeat(129)] {
            let mut headers = with(&[odd]);
            let id = assign(&mut headers);
            assert_eq!(id.len(), 32, "{odd:?} -> {id:?}");
            assert_eq!(headers.get(&X_REQUEST_ID), Some(&id), "{odd:?} replaced");
        }
        let mut headers = HeaderMap::new();
        let made = assign(&mut headers);
        assert_eq!(headers.get(&X_REQUEST_ID), Some(&made));
        assert!(made
            .to_str()
            .expect("ascii")
            .bytes()
            .all(|b| b.is_ascii_hexdigit()));
        assert_ne!(made, assign(&mut HeaderMap::new()), "made ids differ");
    }

    #[test]
    fn the_hex_table_spells_every_byte_as_format_does() {
        for byte in 0..=255u8 {
            assert_eq!(
                HEX_PAIRS[usize::from(byte)],
                *format!("{byte:02x}").as_bytes()
            );
        }
    }

    #[test]
    fn ids_cut_from_shared_blocks_stay_whole_and_distinct() {
        // Several blocks' worth: each ID keeps its own bytes while later ones are written.
        let ids: Vec<HeaderValue> = (0..IDS_PER_BLOCK * 3 + 5).map(|_| made()).collect();
        let copies: Vec<Vec<u8>> = ids.iter().map(|id| id.as_bytes().to_vec()).collect();
        let more: Vec<HeaderValue> = (0..IDS_PER_BLOCK).map(|_| made()).collect();
        for (id, copy) in ids.iter().zip(&copies) {
            assert_eq!(id.as_bytes(), &copy[..]);
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        }
        let distinct: std::collections::HashSet<&[u8]> =
            ids.iter().chain(&more).map(HeaderValue::as_bytes).collect();
        assert_eq!(distinct.len(), ids.len() + more.len());
    }
}
