//! A plain SMTP client for tests: send a line, check the reply code.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A reply: code and the text of its last line.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text after the code of every line, joined by newlines.
    pub text: String,
}

/// An SMTP client connection.
pub struct SmtpClient {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl SmtpClient {
    /// Connects to `server` from `source` (any loopback address) and reads the greeting.
    pub async fn connect_from(source: IpAddr, server: SocketAddr) -> SmtpClient {
        let (r, w) = tcp_from(source, server).await.into_split();
        let mut c = SmtpClient {
            r: BufReader::new(r),
            w,
        };
        c.expect(220).await;
        c
    }

    /// Connects from 127.0.0.1.
    pub async fn connect(server: SocketAddr) -> SmtpClient {
        Self::connect_from([127, 0, 0, 1].into(), server).await
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, data: &[u8]) {
        self.w.write_all(data).await.expect("send to the ingress");
    }

    /// Sends one command line.
    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn reply(&mut self) -> Reply {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(30), self.r.read_line(&mut line))
                .await
                .expect("a reply within 30 s")
                .expect("read a reply");
            assert!(n > 0, "connection closed while waiting for a reply");
            let line = line.trim_end();
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Reply {
                    code,
                    text: text.join("\n"),
                };
            }
        }
    }

    /// Reads a reply and asserts its code.
    pub async fn expect(&mut self, code: u16) -> Reply {
        let r = self.reply().await;
        assert_eq!(r.code, code, "expected {code}, got {r:?}");
        r
    }

    /// Sends a command and asserts the reply code.
    pub async fn command(&mut self, line: &str, code: u16) -> Reply {
        self.send(line).await;
        self.expect(code).await
    }

    /// A whole transaction that must be accepted; returns the queue id.
    pub async fn send_mail(&mut self, from: &str, rcpts: &[&str], content: &str) -> String {
        self.command(&format!("MAIL FROM:<{from}>"), 250).await;
        for r in rcpts {
            self.command(&format!("RCPT TO:<{r}>"), 250).await;
        }
        self.command("DATA", 354).await;
        self.send_raw(content.as_bytes()).await;
        let reply = self.command(".", 250).await;
        queue_id(&reply.text)
    }
}

/// A TCP connection to `server` from `source` (any loopback address).
pub async fn tcp_from(source: IpAddr, server: SocketAddr) -> tokio::net::TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let stream = socket
        .connect(server)
        .await
        .expect("connect to the ingress");
    // Commands are written one by one: without this, Nagle's algorithm holds a command
    // back until the server's delayed ACK of the previous write (40 ms each time).
    stream.set_nodelay(true).unwrap();
    stream
}

/// The queue id of `2.0.0 Ok: queued as <id>`.
pub fn queue_id(text: &str) -> String {
    text.rsplit("queued as ")
        .next()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains(' '))
        .unwrap_or_else(|| panic!("no queue id in {text:?}"))
}
