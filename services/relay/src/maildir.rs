//! Local delivery into Maildir (`<root>/<domain>/<user>/{tmp,new,cur}`).
//!
//! The file name is derived from the queue id and the recipient's position, so a job that
//! is redelivered after a crash finds its earlier file and does not write a second copy.

use std::io::Write;
use std::path::{Path, PathBuf};

/// One local delivery.
pub struct LocalDelivery<'a> {
    /// The Maildir root.
    pub root: &'a Path,
    /// Our host name (part of the file name).
    pub hostname: &'a str,
    /// The queue id.
    pub queue_id: &'a str,
    /// The recipient's index in the message.
    pub index: u32,
    /// Seconds since the epoch when the message was received.
    pub received_secs: i64,
    /// The envelope sender, for Return-Path.
    pub sender: &'a str,
    /// The recipient.
    pub recipient: &'a str,
}

/// A file-system-safe name for a local part or domain: lower case, and anything outside
/// `[a-z0-9._+-]` (or a leading dot) written as `%XX`.
fn path_component(s: &str) -> String {
    let mut out = String::new();
    for (i, b) in s.to_lowercase().bytes().enumerate() {
        let safe = b.is_ascii_alphanumeric() || b"_+-".contains(&b) || (b == b'.' && i > 0);
        if safe {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl LocalDelivery<'_> {
    /// The mailbox directory of the recipient.
    pub fn mailbox_dir(&self) -> PathBuf {
        let (local, domain) = self
            .recipient
            .rsplit_once('@')
            .unwrap_or((self.recipient, ""));
        self.root
            .join(path_component(domain))
            .join(path_component(local))
    }

    fn file_name(&self) -> String {
        format!(
            "{}.{}_{}.{}",
            self.received_secs,
            self.queue_id,
            self.index,
            path_component(self.hostname)
        )
    }

    /// Writes the message (with Return-Path and Delivered-To) and returns its path. Blocking:
    /// call it from a blocking thread.
    pub fn write(&self, content: &[u8]) -> std::io::Result<PathBuf> {
        let dir = self.mailbox_dir();
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let name = self.file_name();
        let final_path = dir.join("new").join(&name);
        if final_path.exists() {
            return Ok(final_path);
        }
        let tmp_path = dir.join("tmp").join(&name);
        let mut file = std::fs::File::create(&tmp_path)?;
        write!(
            file,
            "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
            self.sender, self.recipient
        )?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&tmp_path, &final_path)?;
        std::fs::File::open(dir.join("new"))?.sync_all()?;
        Ok(final_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_safe() {
        assert_eq!(path_component("Demo"), "demo");
        assert_eq!(path_component("../etc"), "%2E.%2Fetc");
        assert_eq!(path_component(".."), "%2E.");
        assert_eq!(path_component("a.b+c"), "a.b+c");
        assert_eq!(path_component("\"x y\""), "%22x%20y%22");
    }

    #[test]
    fn writes_once_per_recipient() {
        let root = std::env::temp_dir().join(format!("mailflow-maildir-{}", std::process::id()));
        let d = LocalDelivery {
            root: &root,
            hostname: "mx.test",
            queue_id: "Q1",
            index: 0,
            received_secs: 1,
            sender: "s@x.test",
            recipient: "Demo@Example.test",
        };
        let p1 = d.write(b"Subject: a\r\n\r\nhi\r\n").unwrap();
        let p2 = d.write(b"Subject: a\r\n\r\nhi\r\n").unwrap();
        assert_eq!(p1, p2);
        assert!(p1.starts_with(root.join("example.test").join("demo").join("new")));
        let files = std::fs::read_dir(root.join("example.test/demo/new"))
            .unwrap()
            .count();
        assert_eq!(files, 1);
        let text = std::fs::read_to_string(&p1).unwrap();
        assert!(text.starts_with(
            "Return-Path: <s@x.test>\r\nDelivered-To: Demo@Example.test\r\nSubject: a"
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
