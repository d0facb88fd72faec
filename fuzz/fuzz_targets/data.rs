//! DATA decoding in arbitrary chunks. An accepted body has only CRLF line endings, and
//! encoding it for transmission and decoding it again gives the same body (the relay's
//! dot-stuffing is the inverse of the ingress' unstuffing). Content is taken along the way,
//! as the ingress does when it streams a large body to storage. Any input encoded in
//! pieces, as the relay sends a body, is encoded as it would be whole.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use mailflow_smtp::{DataDecoder, DataEvent, LineEndings, dot};

fn decode_whole(
    input: &[u8],
    chunk: usize,
    endings: LineEndings,
) -> Option<Result<BytesMut, mailflow_smtp::DataProblem>> {
    let mut dec = DataDecoder::new(1 << 20, endings);
    let mut buf = BytesMut::new();
    let mut taken = BytesMut::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        match dec.decode(&mut buf) {
            DataEvent::Done(r) => {
                return Some(r.map(|rest| {
                    taken.extend_from_slice(&rest);
                    taken
                }));
            }
            DataEvent::NeedMore => taken.extend_from_slice(&dec.body().take()),
        }
    }
    None
}

/// `body` encoded in pieces of `size`.
fn encode_in_pieces(body: &[u8], size: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    for piece in dot::pieces(body, size) {
        dot::encode_piece(piece, &mut wire);
    }
    dot::end(body, &mut wire);
    wire
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut whole = Vec::new();
    dot::encode(input, &mut whole);
    assert_eq!(encode_in_pieces(input, chunk), whole);
    for endings in [LineEndings::Reject, LineEndings::Normalize] {
        if let Some(Ok(body)) = decode_whole(input, chunk, endings) {
            assert!(common::only_crlf_line_endings(&body));
            let mut wire = Vec::new();
            dot::encode(&body, &mut wire);
            let again = decode_whole(&wire, chunk, LineEndings::Reject)
                .expect("an encoded body ends")
                .expect("an encoded body is clean");
            assert_eq!(again, body);
        }
    }
});
