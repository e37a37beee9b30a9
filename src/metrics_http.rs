//! A deliberately tiny HTTP/1.x responder for `/metrics` and `/healthz`: two GET routes do not
//! justify an HTTP framework in a security product's dependency tree.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(handle(stream)); }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn handle(mut stream: TcpStream) {
    let mut buf = [0u8; 2048];
    let mut len = 0;
    // Read until the end of the request head (or 2 KiB, or 5 s): enough for a GET line.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while len < buf.len() {
            match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let (status, body) = route(&buf[..len]);
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn route(head: &[u8]) -> (&'static str, String) {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return ("405 Method Not Allowed", "only GET\n".into());
    }
    match path {
        "/metrics" => {
            let mut out = String::new();
            crate::commands::gateway::render_metrics(&mut out);
            crate::commands::dns::render_metrics(&mut out);
            ("200 OK", out)
        }
        "/healthz" => ("200 OK", "ok\n".into()),
        _ => (
            "404 Not Found",
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn routes() {
        assert_eq!(route(b"GET /healthz HTTP/1.1\r\n\r\n").0, "200 OK");
        assert_eq!(route(b"GET /nope HTTP/1.1\r\n\r\n").0, "404 Not Found");
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n").0,
            "405 Method Not Allowed"
        );
        assert_eq!(route(b"").0, "405 Method Not Allowed");
    }
}
