//! Any command line: parsing never panics, and an accepted address parses again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailflow_smtp::{Command, ForwardPath, Path, address};

fuzz_target!(|data: &[u8]| {
    match Command::parse(data) {
        Ok(Command::Mail {
            from: Path::Mailbox(m),
            ..
        })
        | Ok(Command::Rcpt {
            to: ForwardPath::Mailbox(m),
            ..
        }) => {
            let text = m.to_string();
            let again = address::parse_mailbox(&text).expect("a parsed mailbox parses again");
            assert_eq!(again.to_string(), text);
        }
        Ok(_) => {}
        Err(e) => {
            let reply = e.reply();
            assert!((500..600).contains(&reply.code));
        }
    }
});
