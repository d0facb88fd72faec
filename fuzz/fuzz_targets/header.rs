//! Header sections of arbitrary messages. Fields never overlap and lie in the section in
//! order (lines that are no field are skipped between them), their values unfold without
//! panicking, and removing every field leaves exactly what lies between and after them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailflow_smtp::header::{authserv_id, fields, section_len, without};

fuzz_target!(|data: &[u8]| {
    let section = section_len(data);
    assert!(section <= data.len());
    let found = fields(data);
    let mut at = 0;
    let mut rest = Vec::new();
    for f in &found {
        assert!(f.span.start >= at, "fields are in order and apart");
        assert!(f.span.end <= section);
        let _ = authserv_id(&f.value());
        rest.extend_from_slice(&data[at..f.span.start]);
        at = f.span.end;
    }
    rest.extend_from_slice(&data[at..]);
    match without(data, |_| true) {
        Some(left) => assert_eq!(left, rest),
        None => assert!(found.is_empty()),
    }
});
