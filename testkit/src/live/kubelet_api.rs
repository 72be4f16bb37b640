//! The kubelet endpoints of a live node: the HTTPS port the API server proxies `kubectl logs`
//! to (`/containerLogs/{ns}/{pod}/{container}`, with `previous`, `tailLines` and `follow`), on
//! 127.0.0.1, and the PodResources `List` gRPC service on a unix socket for the node agent.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use modelfleet_proto::podresources::{
    ContainerDevices, ContainerResources, ListPodResourcesRequest, ListPodResourcesResponse, PodResources,
    pod_resources_lister_server::{PodResourcesLister, PodResourcesListerServer},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    task::JoinHandle,
};

use super::runtime::PodIndex;
use crate::{Error, Result};

/// The log file of a container's current run, or of the run before it.
pub fn log_file(
    index: &PodIndex,
    namespace: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Option<PathBuf> {
    let dir = index
        .lock()
        .ok()?
        .values()
        .find(|p| p.namespace == namespace && p.name == pod)
        .and_then(|p| {
            p.containers
                .iter()
                .find(|c| c.name == container)
                .map(|c| c.log_dir.clone())
        })?;
    let mut runs: Vec<u32> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    runs.sort_unstable();
    let run = if previous {
        runs.iter().rev().nth(1)
    } else {
        runs.last()
    }?;
    Some(dir.join(format!("{run}.log")))
}

/// The last `lines` lines of `text` (all with `None`).
pub fn tail_lines(text: &str, lines: Option<usize>) -> &str {
    let Some(n) = lines else { return text };
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    match trimmed
        .char_indices()
        .filter(|(_, c)| *c == '\n')
        .map(|(i, _)| i)
        .rev()
        .nth(n.saturating_sub(1))
    {
        Some(_) if n == 0 => "",
        Some(at) => &text[at + 1..],
        None => text,
    }
}

/// Serves the kubelet HTTPS endpoint on `listener` (127.0.0.1) until aborted.
pub fn serve_https(listener: TcpListener, index: PodIndex) -> Result<JoinHandle<()>> {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key)
        })
        .map_err(|e| Error::Runtime(format!("kubelet TLS: {e}")))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    Ok(tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, index) = (acceptor.clone(), index.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = answer(tls, &index).await;
                }
            });
        }
    }))
}

async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    index: &PodIndex,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let mut stream = reader.into_inner();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let file = match parts.as_slice() {
        ["containerLogs", ns, pod, container] => {
            log_file(index, ns, pod, container, param("previous") == Some("true"))
        }
        _ => None,
    };
    let Some(file) = file else {
        let body = format!("no such container log: {path}\n");
        let head = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        return stream.write_all(body.as_bytes()).await;
    };
    let tail = param("tailLines").and_then(|n| n.parse().ok());
    let text = tokio::fs::read_to_string(&file).await.unwrap_or_default();
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        .await?;
    stream.write_all(tail_lines(&text, tail).as_bytes()).await?;
    if param("follow") == Some("true") {
        follow(&mut stream, &file, text.len()).await?;
    }
    stream.shutdown().await
}

async fn follow<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    file: &Path,
    mut sent: usize,
) -> std::io::Result<()> {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(text) = tokio::fs::read(file).await else {
            return Ok(());
        };
        if text.len() > sent {
            stream.write_all(&text[sent..]).await?;
            stream.flush().await?;
            sent = text.len();
        }
    }
}

/// PodResources `List` from the node's index.
#[derive(Debug, Clone)]
pub struct PodResourcesService {
    index: PodIndex,
}

#[tonic::async_trait]
impl PodResourcesLister for PodResourcesService {
    async fn list(
        &self,
        _request: tonic::Request<ListPodResourcesRequest>,
    ) -> std::result::Result<tonic::Response<ListPodResourcesResponse>, tonic::Status> {
        let pods = self
            .index
            .lock()
            .map_err(|_| tonic::Status::internal("index lock poisoned"))?;
        let pod_resources = pods
            .values()
            .map(|p| PodResources {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                containers: p
                    .containers
                    .iter()
                    .map(|c| ContainerResources {
                        name: c.name.clone(),
                        devices: (!c.devices.is_empty())
                            .then(|| ContainerDevices {
                                resource_name: modelfleet_crds::constants::GPU_RESOURCE.into(),
                                device_ids: c.devices.clone(),
                            })
                            .into_iter()
                            .collect(),
                        cpu_ids: Vec::new(),
                    })
                    .collect(),
            })
            .collect();
        Ok(tonic::Response::new(ListPodResourcesResponse { pod_resources }))
    }
}

/// Serves PodResources on the unix socket `path` until aborted.
pub fn serve_pod_resources(path: &Path, index: PodIndex) -> Result<JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    }
    let _ = std::fs::remove_file(path);
    let listener =
        tokio::net::UnixListener::bind(path).map_err(Error::io(format!("listen on {}", path.display())))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let service = PodResourcesListerServer::new(PodResourcesService { index });
    Ok(tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", Some(2)), "b\nc\n");
        assert_eq!(tail_lines("a\nb\nc\n", Some(5)), "a\nb\nc\n");
        assert_eq!(tail_lines("a\nb\n", None), "a\nb\n");
    }
}
