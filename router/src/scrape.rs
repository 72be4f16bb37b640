//! Reads every endpoint's queue once per interval from its metrics port (the server's
//! `modelfleet_requests_queued` plus `modelfleet_requests_running`), so picking sees load from
//! every router, and an endpoint whose metrics stop answering goes stale and is not picked.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use modelfleet_contract::{metrics, paths, ports};

use crate::state::Router;

/// The queued plus running requests in a server's exposition; None when neither is there.
pub fn load_from_exposition(text: &str) -> Option<u32> {
    let mut found = None;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(name), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        if name == metrics::REQUESTS_QUEUED.sample || name == metrics::REQUESTS_RUNNING.sample {
            let v: f64 = value.parse().ok()?;
            *found.get_or_insert(0.0) += v.max(0.0);
        }
    }
    found.map(|v: f64| v.round().min(f64::from(u32::MAX)) as u32)
}

async fn scrape_one(router: &Router, pod: SocketAddr, timeout: Duration) -> Option<u32> {
    let addr = SocketAddr::new(pod.ip(), ports::METRICS);
    let request = http::Request::get(format!("http://{addr}{}", paths::METRICS))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let answer = tokio::time::timeout(timeout, async {
        let response = router.upstream.request(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.into_body().collect().await.ok().map(|b| b.to_bytes())
    })
    .await
    .ok()??;
    load_from_exposition(std::str::from_utf8(&answer).ok()?)
}

/// Scrapes every endpoint in the table each `interval`, until the process ends.
pub async fn run(router: Arc<Router>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let addrs = router.table().addresses();
        let timeout = interval.min(Duration::from_millis(800));
        let scrapes = addrs.into_iter().map(|addr| {
            let router = router.clone();
            async move {
                if let Some(load) = scrape_one(&router, addr, timeout).await {
                    router.board.entry(addr).report(load, Instant::now());
                }
            }
        });
        futures::future::join_all(scrapes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_and_running_add_up() {
        let text = "# HELP x\nmodelfleet_requests_queued 3\nmodelfleet_requests_running 2\nmodelfleet_requests_total{tier=\"a\"} 9\n";
        assert_eq!(load_from_exposition(text), Some(5));
        assert_eq!(load_from_exposition("other 1\n"), None, "not a modelfleet server");
    }
}
