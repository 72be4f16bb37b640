//! The two load shapes: closed loop (workers sending back to back, one keep-alive connection
//! each) and open loop (Poisson arrivals against absolute times, latency measured from the
//! scheduled send so a slow server cannot hide queueing: no coordinated omission).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio::{net::TcpStream, sync::Semaphore};

use crate::stats::Tally;

/// Where and what to send.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub uri: http::Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Request bodies, used round robin.
    pub bodies: Arc<[Bytes]>,
    pub timeout: Duration,
}

impl Target {
    /// The `i`-th request; `absolute` for a pooled client (it needs scheme and authority), else
    /// origin-form for a connection of our own.
    fn request(&self, i: u64, absolute: bool) -> Request<Full<Bytes>> {
        let body = self.bodies[(i % self.bodies.len() as u64) as usize].clone();
        let uri = if absolute {
            format!("http://{}{}", self.addr, self.uri.path())
        } else {
            self.uri.path().to_owned()
        };
        let mut builder = Request::post(uri)
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json");
        for (k, v) in &self.headers {
            builder = builder.header(k, v);
        }
        builder.body(Full::new(body)).unwrap_or_default()
    }
}

/// When to stop and what to count.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Requests sent before this are not counted.
    pub measure_from: Instant,
    pub stop: Instant,
    /// Stop after this many requests in all (0: no limit).
    pub max_requests: u64,
}

/// One request slot: true while the request budget allows another.
fn take_ticket(sent: &AtomicU64, max: u64) -> Option<u64> {
    let n = sent.fetch_add(1, Ordering::Relaxed);
    (max == 0 || n < max).then_some(n)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, ()> {
    let stream = TcpStream::connect(addr).await.map_err(|_| ())?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Closed loop: `concurrency` workers, each on its own keep-alive connection.
pub async fn closed_loop(target: Target, concurrency: usize, window: Window) -> Tally {
    let sent = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (target, sent) = (target.clone(), sent.clone());
            tokio::spawn(async move { closed_worker(target, window, sent).await })
        })
        .collect();
    let mut total = Tally::default();
    for w in workers {
        if let Ok(t) = w.await {
            total.merge(t);
        }
    }
    total
}

async fn closed_worker(target: Target, window: Window, sent: Arc<AtomicU64>) -> Tally {
    let mut tally = Tally::default();
    let mut sender: Option<Sender> = None;
    while Instant::now() < window.stop {
        let Some(n) = take_ticket(&sent, window.max_requests) else {
            break;
        };
        let s = match sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(target.addr).await {
                Ok(s) => s,
                Err(()) => {
                    tally.connect_errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let mut s = s;
        let started = Instant::now();
        let counted = started >= window.measure_from;
        if counted {
            tally.sent += 1;
        }
        let outcome = tokio::time::timeout(target.timeout, async {
            s.ready().await.map_err(drop)?;
            let response = s.send_request(target.request(n, false)).await.map_err(drop)?;
            let status = response.status().as_u16();
            response.into_body().collect().await.map_err(drop)?;
            Ok::<u16, ()>(status)
        })
        .await;
        let latency = started.elapsed();
        match outcome {
            Ok(Ok(status)) => {
                sender = Some(s);
                if counted {
                    tally.answer(status, latency);
                }
            }
            Ok(Err(_)) if counted => tally.other_errors += 1,
            Err(_) if counted => tally.timeouts += 1,
            _ => {}
        }
    }
    tally
}

/// Exponential inter-arrival times of a Poisson process at `rate` per second.
pub fn next_gap(rng: &mut fastrand::Rng, rate: f64) -> Duration {
    // 1 - u is in (0, 1], so the logarithm is finite.
    let u = 1.0 - rng.f64();
    Duration::from_secs_f64(-u.ln() / rate)
}

/// Open loop: Poisson arrivals at `rate`; at most `max_in_flight` outstanding (beyond it a
/// scheduled request is counted as dropped by the client, not silently skipped).
pub async fn open_loop(target: Target, rate: f64, max_in_flight: usize, window: Window, seed: u64) -> Tally {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_in_flight)
        .build_http();
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut scheduled = Instant::now();
    let mut n: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    while scheduled < window.stop && (window.max_requests == 0 || n < window.max_requests) {
        tokio::time::sleep_until(scheduled.into()).await;
        let counted = scheduled >= window.measure_from;
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let (client, target, tally) = (client.clone(), target.clone(), tally.clone());
                let at = scheduled;
                tasks.spawn(async move {
                    let outcome = tokio::time::timeout(target.timeout, async {
                        let response = client.request(target.request(n, true)).await?;
                        let status = response.status().as_u16();
                        let _ = response.into_body().collect().await;
                        Ok::<u16, hyper_util::client::legacy::Error>(status)
                    })
                    .await;
                    let latency = at.elapsed();
                    drop(permit);
                    if counted && let Ok(mut t) = tally.lock() {
                        t.sent += 1;
                        match outcome {
                            Ok(Ok(status)) => t.answer(status, latency),
                            Ok(Err(e)) if e.is_connect() => t.connect_errors += 1,
                            Ok(Err(_)) => t.other_errors += 1,
                            Err(_) => t.timeouts += 1,
                        }
                    }
                });
            }
            Err(_) => {
                if counted && let Ok(mut t) = tally.lock() {
                    t.dropped_by_client += 1;
                }
            }
        }
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        n += 1;
        scheduled += next_gap(&mut rng, rate);
    }
    while tasks.join_next().await.is_some() {}
    tally.lock().map(|t| t.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_average_one_over_the_rate() {
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 20_000;
        let total: f64 = (0..n).map(|_| next_gap(&mut rng, 500.0).as_secs_f64()).sum();
        let mean = total / f64::from(n);
        assert!((mean - 0.002).abs() < 0.0001, "mean gap {mean}");
    }

    #[test]
    fn the_request_budget_is_shared() {
        let sent = AtomicU64::new(0);
        assert_eq!(take_ticket(&sent, 2), Some(0));
        assert_eq!(take_ticket(&sent, 2), Some(1));
        assert_eq!(take_ticket(&sent, 2), None);
        assert!(take_ticket(&AtomicU64::new(5), 0).is_some());
    }
}
