//! Header sections of arbitrary messages. Fields never overlap and cover the section in
//! order, their values unfold without panicking, and removing every field leaves exactly
//! what follows the fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailflow_smtp::header::{authserv_id, fields, section_len, without};

fuzz_target!(|data: &[u8]| {
    let section = section_len(data);
    assert!(section <= data.len());
    let found = fields(data);
    let mut at = 0;
    for f in &found {
        assert_eq!(f.span.start, at, "fields are contiguous");
        assert!(f.span.end <= section);
        let _ = authserv_id(&f.value());
        at = f.span.end;
    }
    match without(data, |_| true) {
        Some(rest) => assert_eq!(rest.as_slice(), &data[at..]),
        None => assert!(found.is_empty()),
    }
});
