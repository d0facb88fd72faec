//! BDAT bodies fed in arbitrary pieces: a refused body is refused whatever the chunking, and
//! an accepted one has only CRLF line endings and is the same however it was split, and
//! whether or not its content was taken along the way.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use mailflow_smtp::LineEndings;
use mailflow_smtp::bdat::{self, BdatBody};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = bdat::parse_args(text);
    }
    for endings in [LineEndings::Reject, LineEndings::Normalize] {
        let mut whole = BdatBody::new(1 << 20, endings);
        whole.feed(input);
        let mut pieces = BdatBody::new(1 << 20, endings);
        let mut taken = Vec::new();
        for piece in input.chunks(chunk) {
            pieces.feed(piece);
            taken.extend_from_slice(&pieces.body().take());
        }
        let (a, b) = (
            whole.finish(),
            pieces.finish().map(|rest| {
                taken.extend_from_slice(&rest);
                bytes::BytesMut::from(&taken[..])
            }),
        );
        assert_eq!(a, b, "chunking changed the result");
        if let Ok(body) = a {
            assert!(common::only_crlf_line_endings(&body));
        }
    }
});
