//! Our chunked decoder for upstream answers (`proxy::h1chunked::decode_chunked`) on any bytes, fed in
//! pieces cut at any points: no panic, and the same data, end and error whatever the cuts (a decoder
//! that depends on how reads split the stream would corrupt bodies at random).
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use fulcrum::upstream_client::h1chunked::{decode_chunked, ChunkState, Decoded};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    wire: Vec<u8>,
    cuts: Vec<u16>,
}

/// What decoding `pieces` in order gives: the data, whether the body ended (with how many trailers),
/// whether it failed.
fn decode(pieces: &[&[u8]]) -> (Vec<u8>, Option<usize>, bool) {
    let mut state = ChunkState::Size;
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decode_chunked(&mut state, &mut buf) {
                Ok(Some(Decoded::Data(bytes))) => data.extend_from_slice(&bytes),
                Ok(Some(Decoded::End(trailers))) => {
                    return (data, Some(trailers.map_or(0, |t| t.len())), false)
                }
                Ok(None) => break,
                Err(_) => return (data, None, true),
            }
        }
    }
    (data, None, false)
}

fuzz_target!(|input: Input| {
    let whole = decode(&[&input.wire]);
    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|c| usize::from(*c) % (input.wire.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut at = 0;
    for cut in cuts {
        pieces.push(&input.wire[at..cut]);
        at = cut;
    }
    pieces.push(&input.wire[at..]);
    let split = decode(&pieces);
    // A failure may be found later with cuts (a line-length limit needs the line's bytes), but what
    // was decoded before it, and an end, must agree.
    if whole.2 || split.2 {
        assert!(
            whole.0.starts_with(&split.0) || split.0.starts_with(&whole.0),
            "decoded data differs before the error"
        );
    } else {
        assert_eq!(whole, split, "the cuts changed the result");
    }
});
