//! What an AUTH client sends: a response line and the PLAIN message inside it. Nothing
//! panics; accepted credentials are non-empty and carry no NUL, and a PLAIN message built
//! from them parses back to them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailflow_smtp::sasl::{self, Mechanism};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Mechanism::parse(&text);
    let decoded = sasl::decode_response(&text);
    for message in [decoded.ok(), Some(text.into_owned())]
        .into_iter()
        .flatten()
    {
        if let Ok(c) = sasl::parse_plain(&message) {
            assert!(!c.username.is_empty() && !c.password.is_empty());
            assert!(!c.username.contains('\0') && !c.password.contains('\0'));
            let again = sasl::parse_plain(&format!("\0{}\0{}", c.username, c.password));
            assert_eq!(again, Ok(c));
        }
    }
});
