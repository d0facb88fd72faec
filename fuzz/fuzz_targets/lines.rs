//! Line framing in arbitrary chunks: memory stays bounded and no line exceeds the limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mailflow_smtp::{LineDecoder, LineEvent};

const MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut dec = LineDecoder::new(MAX);
    let mut buf = BytesMut::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                LineEvent::Line(line) => assert!(line.len() <= MAX),
                LineEvent::TooLong => {}
                LineEvent::NeedMore => break,
            }
        }
        assert!(buf.len() <= MAX + 1 + chunk, "buffer grew to {}", buf.len());
    }
});
