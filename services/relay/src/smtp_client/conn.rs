//! One connection to a mail exchanger: greeting, EHLO (HELO as a fallback), and STARTTLS
//! when the server offers it (RFC 3207), after which EHLO is said again. An LMTP server
//! (RFC 2033) is greeted with LHLO instead, and has no HELO to fall back to.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::BytesMut;
use mailflow_proto::v1::TlsInfo;
use mailflow_smtp::{ReplyDecoder, ServerReply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{ClientConfig, HostFailure, Stage};

/// The socket, before or after STARTTLS.
pub(super) enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the TLS state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One open connection.
pub(super) struct Conn {
    /// The socket.
    stream: Stream,
    /// Received octets not yet decoded.
    buf: BytesMut,
    /// Frames multi-line replies.
    decoder: ReplyDecoder,
    /// The server's address, for errors and the cache.
    pub(super) addr: SocketAddr,
    /// How long each reply may take.
    timeout: Duration,
}

impl Conn {
    fn lost(&self, stage: Stage, reason: impl ToString) -> HostFailure {
        HostFailure::Lost {
            addr: self.addr,
            stage,
            reason: reason.to_string(),
        }
    }

    pub(super) async fn read_reply(&mut self, stage: Stage) -> Result<ServerReply, HostFailure> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(self.lost(stage, e)),
            }
            let read =
                tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Err(_) => return Err(self.lost(stage, "timeout")),
                Ok(Err(e)) => return Err(self.lost(stage, e)),
                Ok(Ok(0)) => return Err(self.lost(stage, "connection closed")),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Writes `data` and flushes it. The flush matters over TLS: a TLS stream keeps the
    /// records the socket could not take yet until it is written again or flushed, so
    /// without it the end of a message could stay here while we wait for the reply to it.
    pub(super) async fn send(&mut self, data: &[u8], stage: Stage) -> Result<(), HostFailure> {
        let written = async {
            self.stream.write_all(data).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.timeout, written).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.lost(stage, e)),
            Err(_) => Err(self.lost(stage, "timeout")),
        }
    }

    pub(super) async fn command(
        &mut self,
        line: &str,
        stage: Stage,
    ) -> Result<ServerReply, HostFailure> {
        self.send(format!("{line}\r\n").as_bytes(), stage).await?;
        self.read_reply(stage).await
    }

    /// Says goodbye; a courtesy only, whose outcome nothing depends on.
    pub(super) async fn quit(&mut self) {
        let _ = self.command("QUIT", Stage::Quit).await;
    }

    pub(super) fn refused(&self, reply: ServerReply) -> HostFailure {
        HostFailure::Refused {
            addr: self.addr,
            reply,
        }
    }

    /// EHLO (HELO when refused), or LHLO; returns the extension keywords, upper case. A
    /// server answering with one of `own_names` is ourselves.
    async fn hello(
        &mut self,
        helo: &str,
        lmtp: bool,
        own_names: &[String],
    ) -> Result<Vec<String>, HostFailure> {
        let (verb, stage) = if lmtp {
            ("LHLO", Stage::Lhlo)
        } else {
            ("EHLO", Stage::Ehlo)
        };
        let ehlo = self.command(&format!("{verb} {helo}"), stage).await?;
        if ehlo.is_success() {
            self.not_ourselves(&ehlo, own_names).await?;
            return Ok(ehlo
                .lines
                .iter()
                .skip(1)
                .map(|l| l.to_ascii_uppercase())
                .collect());
        }
        if lmtp {
            self.quit().await;
            return Err(self.refused(ehlo));
        }
        let reply = self.command(&format!("HELO {helo}"), Stage::Helo).await?;
        if !reply.is_success() {
            self.quit().await;
            return Err(self.refused(reply));
        }
        self.not_ourselves(&reply, own_names).await?;
        Ok(Vec::new())
    }

    /// Fails with [`HostFailure::Loop`] (after QUIT) when `reply` names the server with
    /// one of `own_names`.
    async fn not_ourselves(
        &mut self,
        reply: &ServerReply,
        own_names: &[String],
    ) -> Result<(), HostFailure> {
        match own_name(reply, own_names) {
            Some(name) => {
                self.quit().await;
                Err(HostFailure::Loop {
                    addr: self.addr,
                    name,
                })
            }
            None => Ok(()),
        }
    }
}

/// The host name `reply` (a greeting or an EHLO reply) gives, the first word of its first
/// line, when it is one of `own_names` (case and a final dot ignored). Names without a dot,
/// such as `localhost` (the default host name), are never taken for ours: many servers
/// call themselves that, and it says nothing about which host answered. Postfix compares
/// with `myhostname` alone.
fn own_name(reply: &ServerReply, own_names: &[String]) -> Option<String> {
    let name = reply
        .lines
        .first()?
        .split_ascii_whitespace()
        .next()?
        .trim_end_matches('.');
    own_names
        .iter()
        .map(|own| own.trim_end_matches('.'))
        .any(|own| own.contains('.') && own.eq_ignore_ascii_case(name))
        .then(|| name.to_string())
}

/// A connection that has been greeted and has said EHLO, ready for a transaction.
pub(super) struct Ready {
    /// The connection.
    pub(super) conn: Conn,
    /// The EHLO keywords, upper case (empty after a HELO fallback).
    extensions: Vec<String>,
    /// The TLS session, when STARTTLS succeeded.
    pub(super) tls: Option<TlsInfo>,
    /// When it last finished a transaction.
    pub(super) idle_since: Instant,
    /// An LMTP session: one reply per accepted recipient after the data.
    pub(super) lmtp: bool,
    /// Its TLS certificate was verified.
    pub(super) verified: bool,
    /// The host name it was opened for (SNI, and the name a verified certificate matched).
    pub(super) host: String,
}

impl Ready {
    pub(super) fn has(&self, ext: &str) -> bool {
        has(&self.extensions, ext)
    }
}

fn has(extensions: &[String], ext: &str) -> bool {
    extensions
        .iter()
        .any(|l| l.split_ascii_whitespace().next() == Some(ext))
}

/// Connects, reads the greeting, says EHLO (HELO when EHLO is refused) and, when `tls` and
/// the server offers it, starts TLS and says EHLO again.
pub(super) async fn open(
    addr: SocketAddr,
    host: &str,
    config: &ClientConfig<'_>,
    tls: bool,
) -> Result<Ready, HostFailure> {
    let stream = match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(HostFailure::Connect {
                addr,
                reason: e.to_string(),
            });
        }
        Err(_) => {
            return Err(HostFailure::Connect {
                addr,
                reason: "timeout".into(),
            });
        }
    };
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream: Stream::Plain(stream),
        buf: BytesMut::with_capacity(4096),
        decoder: ReplyDecoder::default(),
        addr,
        timeout: config.command_timeout,
    };
    let greeting = conn.read_reply(Stage::Greeting).await?;
    if greeting.code != 220 {
        conn.quit().await;
        if greeting.code >= 500 {
            return Err(HostFailure::Unwelcome {
                addr,
                reply: greeting,
            });
        }
        return Err(conn.refused(greeting));
    }
    // Loop detection is for SMTP only: an LMTP server is a mailbox store, often on this
    // very host under this very name.
    let own_names = if config.lmtp {
        &[][..]
    } else {
        config.own_names
    };
    // Postfix only warns of a greeting with its own name and fails on the EHLO reply; a
    // name with a dot that is ours says as much in the banner, and ends the session before
    // anything is sent.
    conn.not_ourselves(&greeting, own_names).await?;
    let mut extensions = conn.hello(config.helo, config.lmtp, own_names).await?;
    let mut session = None;
    if config.verified.is_some() && !has(&extensions, "STARTTLS") {
        conn.quit().await;
        return Err(HostFailure::TlsRequired { addr });
    }
    if tls && has(&extensions, "STARTTLS") {
        let reply = conn.command("STARTTLS", Stage::StartTls).await?;
        if reply.code != 220 && config.verified.is_some() {
            conn.quit().await;
            return Err(HostFailure::TlsRequired { addr });
        }
        // Otherwise a refusal (454) leaves the session in plaintext: opportunistic TLS.
        if reply.code == 220 {
            let (upgraded, info) = starttls(conn, host, config).await?;
            conn = upgraded;
            session = Some(info);
            // RFC 3207 §4.2: forget what was learnt before TLS.
            extensions = conn.hello(config.helo, config.lmtp, own_names).await?;
        }
    }
    if let Some(credentials) = config.auth {
        authenticate(&mut conn, &extensions, session.is_some(), credentials).await?;
    }
    Ok(Ready {
        conn,
        extensions,
        tls: session,
        idle_since: Instant::now(),
        lmtp: config.lmtp,
        verified: config.verified.is_some(),
        host: host.to_string(),
    })
}

/// AUTH PLAIN (RFC 4954), only inside TLS: credentials never travel in plaintext.
async fn authenticate(
    conn: &mut Conn,
    extensions: &[String],
    encrypted: bool,
    credentials: &super::Credentials,
) -> Result<(), HostFailure> {
    let addr = conn.addr;
    let failed = |reason: String| HostFailure::Auth { addr, reason };
    if !encrypted {
        return Err(failed(
            "no TLS session; credentials are not sent in plaintext".into(),
        ));
    }
    let plain = extensions.iter().any(|l| {
        let mut words = l.split_ascii_whitespace();
        words.next() == Some("AUTH") && words.any(|m| m == "PLAIN")
    });
    if !plain {
        return Err(failed("the server does not offer AUTH PLAIN".into()));
    }
    let token = base64::engine::general_purpose::STANDARD.encode(format!(
        "\0{}\0{}",
        credentials.username, credentials.password
    ));
    let reply = conn
        .command(&format!("AUTH PLAIN {token}"), Stage::Auth)
        .await?;
    if reply.code == 235 {
        Ok(())
    } else {
        conn.quit().await;
        Err(failed(format!("{} {}", reply.code, reply.text())))
    }
}

/// The TLS handshake after `220` to STARTTLS.
async fn starttls(
    conn: Conn,
    host: &str,
    config: &ClientConfig<'_>,
) -> Result<(Conn, TlsInfo), HostFailure> {
    let addr = conn.addr;
    let failed = |reason: String| HostFailure::Tls { addr, reason };
    let Stream::Plain(tcp) = conn.stream else {
        return Err(failed("STARTTLS on an encrypted connection".into()));
    };
    // Anything the server sent after its 220 would be plaintext injected before the
    // handshake (RFC 3207 §5): it is dropped with the buffer.
    let name = super::tls::server_name(host, addr);
    let connector = config.verified.unwrap_or(config.tls);
    let handshake = connector.connect(name, tcp);
    let stream = match tokio::time::timeout(config.command_timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(failed(e.to_string())),
        Err(_) => return Err(failed("handshake timeout".into())),
    };
    let info = super::tls::session_info(&stream);
    Ok((
        Conn {
            stream: Stream::Tls(Box::new(stream)),
            buf: BytesMut::with_capacity(4096),
            decoder: ReplyDecoder::default(),
            addr,
            timeout: conn.timeout,
        },
        info,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::TcpSocket;

    use super::*;

    fn reply(code: u16, first: &str) -> ServerReply {
        ServerReply {
            code,
            enhanced: None,
            lines: vec![first.to_string(), "PIPELINING".into()],
        }
    }

    #[test]
    fn a_server_giving_our_own_name_is_ourselves() {
        let ours = [
            "relay.example.test".to_string(),
            "MX.example.test.".to_string(),
        ];
        for (first, found) in [
            ("mx.example.test ESMTP mailflow", Some("mx.example.test")),
            ("Mx.Example.Test. ESMTP", Some("Mx.Example.Test")),
            ("relay.example.test", Some("relay.example.test")),
            ("mx.example.test.evil ESMTP", None),
            ("mail.other.test ESMTP", None),
            ("", None),
        ] {
            assert_eq!(
                own_name(&reply(220, first), &ours).as_deref(),
                found,
                "{first:?}"
            );
        }
        // A name without a dot is no evidence: many servers call themselves localhost.
        let local = ["localhost".to_string()];
        assert_eq!(own_name(&reply(220, "localhost ESMTP"), &local), None);
        assert_eq!(own_name(&reply(220, "mx.example.test"), &[]), None);
    }

    /// A TLS connection over loopback whose sockets take little at a time, and the server's
    /// end of it.
    async fn narrow_tls_pair() -> (Conn, tokio_rustls::server::TlsStream<TcpStream>) {
        let cert = rcgen::generate_simple_self_signed(vec!["mx.test".to_string()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        // Small buffers at both ends: the client's writes soon find the socket full.
        let listening = TcpSocket::new_v4().unwrap();
        listening.set_recv_buffer_size(4096).unwrap();
        listening.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listening.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(4096).unwrap();
        let (client, accepted) = tokio::join!(socket.connect(addr), listener.accept());
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let name = super::super::tls::server_name("mx.test", addr);
        let (client, server) = tokio::join!(
            super::super::tls::opportunistic().connect(name, client.unwrap()),
            acceptor.accept(accepted.unwrap().0)
        );
        let conn = Conn {
            stream: Stream::Tls(Box::new(client.unwrap())),
            buf: BytesMut::new(),
            decoder: ReplyDecoder::default(),
            addr,
            timeout: Duration::from_secs(5),
        };
        (conn, server.unwrap())
    }

    /// What `send` wrote is on the wire when it returns, also when the socket could not
    /// take it all at once: TLS keeps the rest until flushed, and the exchanger would wait
    /// for the end of the data while we waited for its reply.
    #[tokio::test]
    async fn send_over_tls_leaves_nothing_behind() {
        let (mut conn, mut server) = narrow_tls_pair().await;
        let data = vec![b'x'; 1024 * 1024];
        let len = data.len();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; len];
            server.read_exact(&mut got).await.map(|_| got)
        });
        conn.send(&data, Stage::Body).await.unwrap();
        // Nothing drives the client's side any more: what it kept back never arrives.
        let got = tokio::time::timeout(Duration::from_secs(5), reader).await;
        let Ok(Ok(Ok(got))) = got else {
            panic!("the server did not get all that send wrote");
        };
        assert!(got == data);
        drop(conn);
    }
}
