//! A real Dovecot (Debian's packages) with LMTP, IMAP and POP3 on loopback ports, its
//! configuration, users and mailboxes in a temporary directory.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::{free_port, wait};

/// A running Dovecot.
pub struct Dovecot {
    /// Configuration, users, mail and logs.
    pub dir: TempDir,
    /// The LMTP listener.
    pub lmtp: SocketAddr,
    /// The IMAP listener (plaintext login allowed: loopback only).
    pub imap: SocketAddr,
    /// The POP3 listener.
    pub pop3: SocketAddr,
    /// The master process (killed on drop).
    _child: Child,
}

impl Dovecot {
    /// Starts Dovecot with `users` as (address, password); other addresses do not exist
    /// for it (LMTP refuses them with `550 5.1.1`).
    pub async fn start(users: &[(&str, &str)]) -> Dovecot {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (lmtp, imap, pop3) = (free_port(), free_port(), free_port());
        // Mail processes run as the test's user; as root (in CI) they run as nobody, since
        // Dovecot never gives mail to root. Their homes must then be reachable by nobody.
        let root_run = id_of("-u") == "0";
        let (uid, gid) = if root_run {
            ("65534".to_string(), "65534".to_string())
        } else {
            (id_of("-u"), id_of("-g"))
        };
        if root_run {
            use std::os::unix::fs::PermissionsExt;
            let open = std::fs::Permissions::from_mode(0o755);
            std::fs::set_permissions(root, open).unwrap();
            std::fs::create_dir(root.join("home")).unwrap();
            std::fs::set_permissions(root.join("home"), std::fs::Permissions::from_mode(0o777))
                .unwrap();
        }
        let passwd: String = users
            .iter()
            .map(|(user, password)| {
                format!(
                    "{user}:{{PLAIN}}{password}:{uid}:{gid}::{}/home/{user}::\n",
                    root.display()
                )
            })
            .collect();
        std::fs::write(root.join("passwd"), passwd).unwrap();
        let login_user = if root_run { "dovenull" } else { "nobody" };
        let internal_user = if root_run {
            "dovecot".to_string()
        } else {
            id_of("-un")
        };
        let config = format!(
            r#"base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap pop3 lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = 0
default_login_user = {login_user}
default_internal_user = {internal_user}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@example.test
}}
"#,
            root = root.display()
        );
        let conf = root.join("dovecot.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new("/usr/sbin/dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("dovecot starts (scripts/install-deps peers installs it)");
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        for port in [lmtp, imap, pop3] {
            wait::port_open(addr(port), Duration::from_secs(30)).await;
        }
        Dovecot {
            dir,
            lmtp: addr(lmtp),
            imap: addr(imap),
            pop3: addr(pop3),
            _child: child,
        }
    }

    /// Dovecot's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

/// `id <flag>` of this process (`-u`, `-g`, `-un`).
fn id_of(flag: &str) -> String {
    let out = std::process::Command::new("id").arg(flag).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
