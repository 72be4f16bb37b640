//! HTTP/1.1 requests from inside the fleet namespace, as a client pod would send them: the host
//! name resolved through the fleet's CoreDNS, one connection per request (so a Service spreads
//! requests over its endpoints as kube-proxy spreads connections).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{dns, netns::FleetNet};
use crate::{Error, Result};

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: BTreeMap<String, String>,
    /// The body (chunked encoding undone).
    pub body: String,
}

/// Splits `http://host:port/path` into host, port and path.
pub fn split_url(url: &str) -> std::result::Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = rest
        .split_once('/')
        .map(|(a, p)| (a, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("{url}: bad port {p:?}"))?),
        None => (authority, 80),
    };
    Ok((host.to_string(), port, path))
}

/// Sends `method url` with an optional JSON body from inside the namespace.
pub async fn request(
    net: &FleetNet,
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Answer> {
    let (host, port, path) = split_url(url).map_err(Error::Network)?;
    let ip = match host.parse() {
        Ok(ip) => ip,
        Err(_) => std::net::IpAddr::V4(dns::resolve(net, &host).await?),
    };
    let addr = SocketAddr::new(ip, port);
    let attempt = async {
        let mut stream = net.connect(addr, timeout).await?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n");
        for (k, v) in headers {
            head += &format!("{k}: {v}\r\n");
        }
        if let Some(body) = body {
            head += &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        head += "\r\n";
        let io = |what: &'static str| Error::io(format!("{what} {url}"));
        stream.write_all(head.as_bytes()).await.map_err(io("send"))?;
        if let Some(body) = body {
            stream.write_all(body.as_bytes()).await.map_err(io("send"))?;
        }
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(io("read"))?;
        parse_answer(&raw).map_err(|e| Error::Network(format!("{url}: {e}")))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| Error::Network(format!("{method} {url}: no answer within {timeout:?}")))?
}

/// Parses a whole HTTP/1.1 answer.
pub fn parse_answer(raw: &[u8]) -> std::result::Result<Answer, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or("truncated chunk")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).ok_or("truncated chunk")?);
        body = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_chunked_answers_parse() {
        assert_eq!(
            split_url("http://minilm.demo.svc:8080/v1/embeddings").unwrap(),
            ("minilm.demo.svc".into(), 8080, "/v1/embeddings".into())
        );
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let answer = parse_answer(raw).unwrap();
        assert_eq!(
            (
                answer.status,
                answer.body.as_str(),
                answer.headers["x-a"].as_str()
            ),
            (200, "abcde", "b")
        );
    }
}
