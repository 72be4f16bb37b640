//! A trivial HTTP/1.1 keep-alive server on 127.0.0.1 for the tests and the throughput benchmark:
//! it answers every request with a fixed embeddings JSON, and every `nth` with a 429.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const OK: &str = "{\"data\":[{\"embedding\":[0.25,-0.5,0.125],\"index\":0,\"object\":\"embedding\"}],\
\"model\":\"minilm\",\"object\":\"list\",\"usage\":{\"prompt_tokens\":4,\"total_tokens\":4}}";
const BUSY: &str = "{\"error\":{\"message\":\"the queue is full\",\"type\":\"rate_limit_exceeded\",\
\"param\":null,\"code\":\"queue_full\"}}";

/// Connections accepted by every server of this process (for the benchmark).
pub static ACCEPTED: AtomicU64 = AtomicU64::new(0);

/// Binds 127.0.0.1:0 and serves on the current runtime; every `nth` answer (counted over all
/// connections) is a 429 with `Retry-After`, none if `nth` is 0.
pub async fn spawn(nth: u64) -> SocketAddr {
    spawn_with(nth, false).await
}

/// Like [`spawn`]; with `close`, each connection serves one request (`connection: close`).
pub async fn spawn_with(nth: u64, close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let count = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(connection(socket, count.clone(), nth, close));
        }
    });
    addr
}

/// The server on its own OS thread with a single-threaded runtime: one core, as in the
/// benchmark's "the server uses one core". Runs until the process ends.
pub fn spawn_on_own_thread(nth: u64) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let _ = tx.send(spawn(nth).await);
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("the server thread started")
}

/// Serves one connection: parses requests (head plus `content-length` body), answers each,
/// writing the answers to all requests read at once in one write.
async fn connection(mut socket: TcpStream, count: Arc<AtomicU64>, nth: u64, close: bool) {
    let _ = socket.set_nodelay(true);
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = Vec::with_capacity(4 * 1024);
    let extra = if close { "connection: close\r\n" } else { "" };
    let (ok, busy) = (
        response("200 OK", extra, OK),
        response(
            "429 Too Many Requests",
            &format!("{extra}retry-after: 1\r\n"),
            BUSY,
        ),
    );
    loop {
        while let Some(len) = request_len(&input) {
            input.advance(len);
            let i = count.fetch_add(1, Ordering::Relaxed) + 1;
            output.extend_from_slice(if nth > 0 && i.is_multiple_of(nth) {
                &busy
            } else {
                &ok
            });
        }
        if !output.is_empty() {
            if socket.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
            if close {
                return;
            }
        }
        match socket.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A whole answer: status line, headers and body.
fn response(status: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The length of the first complete request in `buf` (head and body), if it is all there.
fn request_len(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let body_len = head
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head_end + body_len).then_some(head_end + body_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed_by_content_length() {
        let req = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(request_len(req), Some(req.len()));
        assert_eq!(request_len(&req[..req.len() - 1]), None);
        assert_eq!(request_len(b"GET / HTTP/1.1\r\n\r\nPOST"), Some(18));
        assert_eq!(request_len(b"GET / HTTP/1.1\r\n"), None);
    }
}
