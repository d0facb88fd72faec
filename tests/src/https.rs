//! A small HTTPS server that answers every request with one fixed body: an MTA-STS policy
//! host for the tests.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A running server.
pub struct HttpsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests answered.
    served: Arc<AtomicUsize>,
}

impl HttpsServer {
    /// Serves `body` as `text/plain` on `ip`, port `port` (0 for any).
    pub async fn start(ip: IpAddr, port: u16, tls: TlsAcceptor, body: &str) -> HttpsServer {
        let listener = TcpListener::bind(SocketAddr::new(ip, port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let count = served.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tls, response, count) = (tls.clone(), response.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut stream) = tls.accept(tcp).await else {
                        return;
                    };
                    // Read the request head, then answer and close.
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        HttpsServer { addr, served }
    }

    /// Requests answered so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}
