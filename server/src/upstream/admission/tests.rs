use std::time::{Duration, Instant};

use super::*;

fn tier(name: &str, timeout_ms: Option<u64>, share: f64) -> TierConfig {
    TierConfig {
        name: name.into(),
        timeout: timeout_ms.map(Duration::from_millis),
        queue_share: share,
    }
}

fn gate(max_running: usize, max_waiting: usize, tiers: Vec<TierConfig>) -> (Arc<Admission>, Metrics) {
    let metrics = Metrics::default();
    let limits = AdmissionLimits {
        tiers,
        max_running,
        max_waiting,
    };
    (Admission::new(limits, metrics.clone()), metrics)
}

/// Lets spawned waiters run up to their wait.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn a_finished_request_admits_the_next_and_a_higher_tier_goes_first() {
    let (gate, metrics) = gate(1, 8, vec![tier("paid", None, 1.0), tier("free", None, 1.0)]);
    let first = gate.acquire(1, None).await.expect("a free place");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for (tier, name) in [(1, "free"), (0, "paid")] {
        let (gate, order) = (gate.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let permit = gate.acquire(tier, None).await.expect("admitted");
            order.lock().expect("lock").push(name);
            settle().await;
            drop(permit);
        }));
        settle().await;
    }
    assert_eq!((metrics.running.get(), metrics.queued.get()), (1, 2));
    drop(first);
    for w in waiters {
        w.await.expect("waiter");
    }
    assert_eq!(*order.lock().expect("lock"), ["paid", "free"], "strict priority");
    assert_eq!((metrics.running.get(), metrics.queued.get()), (0, 0));
    assert_eq!(gate.load(), 0);
}

#[tokio::test]
async fn a_full_queue_and_a_full_tier_share_refuse_with_429() {
    let (gate, _) = gate(1, 2, vec![tier("paid", None, 1.0), tier("free", None, 0.5)]);
    let _running = gate.acquire(0, None).await.expect("a free place");
    let free = tokio::spawn({
        let gate = gate.clone();
        async move { gate.acquire(1, None).await.map(drop) }
    });
    settle().await;
    let share = gate
        .acquire(1, None)
        .await
        .expect_err("free holds its share (1 of 2)");
    assert_eq!(share.status().as_u16(), 429);
    assert!(share.to_string().contains("share"), "{share}");
    let paid = tokio::spawn({
        let gate = gate.clone();
        async move { gate.acquire(0, None).await.map(drop) }
    });
    settle().await;
    let full = gate.acquire(0, None).await.expect_err("the queue holds 2");
    assert!(full.to_string().contains("queue full"), "{full}");
    assert!(full.retry_after().is_some_and(|d| d >= Duration::from_secs(1)));
    free.abort();
    paid.abort();
}

#[tokio::test]
async fn a_wait_past_the_tier_timeout_or_the_deadline_is_a_503_and_leaves_the_queue() {
    let (gate, metrics) = gate(1, 8, vec![tier("default", Some(50), 1.0)]);
    let _running = gate.acquire(0, None).await.expect("a free place");
    let started = Instant::now();
    let e = gate.acquire(0, None).await.expect_err("times out");
    assert!(
        matches!(
            e,
            InferError::QueueTimeout {
                source_of_limit: "tier timeout",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_millis(10);
    let e = gate.acquire(0, Some(deadline)).await.expect_err("times out");
    assert!(
        matches!(
            e,
            InferError::QueueTimeout {
                source_of_limit: headers::TIMEOUT,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.status().as_u16(), 503);
    assert_eq!(metrics.queued.get(), 0, "timed-out requests leave the queue");
    let rejected = metrics
        .rejected
        .get_or_create(&crate::metrics::RejectLabels {
            tier: "default".into(),
            reason: "queue_timeout",
        })
        .get();
    assert_eq!(rejected, 2);
}

#[tokio::test]
async fn a_waiter_that_goes_away_leaves_the_queue_and_takes_no_place() {
    let (gate, metrics) = gate(1, 8, vec![tier("default", None, 1.0)]);
    let running = gate.acquire(0, None).await.expect("a free place");
    let gone = tokio::spawn({
        let gate = gate.clone();
        async move { gate.acquire(0, None).await.map(drop) }
    });
    settle().await;
    assert_eq!(metrics.queued.get(), 1);
    gone.abort();
    settle().await;
    assert_eq!(metrics.queued.get(), 0);
    drop(running);
    let next = tokio::time::timeout(Duration::from_secs(1), gate.acquire(0, None)).await;
    assert!(matches!(next, Ok(Ok(_))), "the place is free again");
    let cancelled = metrics
        .cancelled
        .get_or_create(&TierLabel {
            tier: "default".into(),
        })
        .get();
    assert_eq!(cancelled, 1);
}
