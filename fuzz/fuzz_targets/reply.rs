//! Server replies as the relay reads them: never a panic, and bounded.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mailflow_smtp::ReplyDecoder;

fuzz_target!(|data: &[u8]| {
    let mut dec = ReplyDecoder::default();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(reply)) = dec.decode(&mut buf) {
        assert!((200..600).contains(&reply.code));
        assert!(!reply.lines.is_empty());
    }
});
