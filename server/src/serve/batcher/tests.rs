//! The batcher as a state machine under paused time; the test plays the
//! worker, receiving batches and completing them when it chooses.

use super::adaptive::Adaptive;
use super::queue::SWEEP_INTERVAL;
use super::*;
use crate::config::model::{PadInput, Padding};
use crate::metrics::Metrics;
use std::collections::BTreeMap;
use switchyard_runtimes::DataType;

fn queue(capacity: usize, levels: u32) -> QueuePolicy {
    QueuePolicy {
        capacity,
        priority_levels: levels,
        default_priority: levels,
        default_timeout: None,
        timeout_action: TimeoutAction::Reject,
        max_request_time: Duration::from_secs(300),
    }
}

fn batching(delay_ms: u64, preferred: Vec<u32>, idle: bool) -> BatchingConfig {
    BatchingConfig {
        max_queue_delay: Duration::from_millis(delay_ms),
        preferred_batch_sizes: preferred,
        dispatch_when_idle: idle,
        adaptive_latency_budget: None,
        padding: Padding::default(),
    }
}

fn settings(batching: Option<BatchingConfig>, queue: QueuePolicy, max: usize) -> BatcherSettings {
    BatcherSettings {
        model: "m".into(),
        version: 1,
        queue,
        batching,
        max_batch_size: max,
        instances: 1,
        input_names: vec!["x".into()],
        cut_outputs: Vec::new(),
    }
}

fn start(settings: BatcherSettings) -> (BatcherHandle, mpsc::Receiver<Batch>) {
    spawn(settings, Metrics::new().unwrap().for_model("m", 1, 8))
}

/// A request of `rows` rows whose values are `tag`, with `width` columns.
fn rows(rows: usize, width: usize, tag: f32) -> Vec<Tensor> {
    vec![
        Tensor::from_slice(
            "x",
            DataType::Fp32,
            vec![rows as i64, width as i64],
            &vec![tag; rows * width],
        )
        .unwrap(),
    ]
}

fn submit(
    handle: &BatcherHandle,
    inputs: Vec<Tensor>,
    priority: Option<u32>,
    timeout_ms: Option<u64>,
) -> tokio::task::JoinHandle<Reply> {
    let handle = handle.clone();
    tokio::spawn(async move {
        handle
            .submit(Submission {
                inputs,
                priority,
                timeout: timeout_ms.map(Duration::from_millis),
                context: None,
            })
            .await
    })
}

/// Echoes the batch's input as its output: each request must get its own rows back.
fn echo(batch: Batch) {
    let output = batch.joined_inputs().unwrap()[0].clone().with_name("y");
    batch.complete(Ok(vec![output]));
}

fn tags(batch: &Batch) -> Vec<f32> {
    let x = &batch.joined_inputs().unwrap()[0];
    let width = x.shape()[1] as usize;
    x.as_slice::<f32>().iter().step_by(width).copied().collect()
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_waits_for_the_delay_then_takes_everything_queued() {
    let (handle, mut batches) = start(settings(Some(batching(5, vec![], false)), queue(64, 1), 8));
    let started = Instant::now();
    let replies: Vec<_> = (0..3)
        .map(|i| submit(&handle, rows(1, 2, i as f32), None, None))
        .collect();
    settle().await;
    assert!(batches.try_recv().is_err(), "nothing before the delay");
    let batch = batches.recv().await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(5));
    assert_eq!(tags(&batch), vec![0.0, 1.0, 2.0]);
    echo(batch);
    for (i, reply) in replies.into_iter().enumerate() {
        let out = reply.await.unwrap().unwrap();
        assert_eq!(out[0].shape(), &[1, 2]);
        assert_eq!(out[0].as_slice::<f32>().as_ref(), &[i as f32; 2]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_goes_at_once() {
    let (handle, mut batches) = start(settings(
        Some(batching(1000, vec![], false)),
        queue(64, 1),
        8,
    ));
    let started = Instant::now();
    let _replies: Vec<_> = (0..4)
        .map(|_| submit(&handle, rows(2, 1, 0.0), None, None))
        .collect();
    let batch = batches.recv().await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(batch.rows(), 8);
}

#[tokio::test(start_paused = true)]
async fn preferred_sizes_cut_the_batch() {
    let (handle, mut batches) = start(settings(
        Some(batching(10, vec![4], false)),
        queue(64, 1),
        16,
    ));
    let started = Instant::now();
    let _replies: Vec<_> = (0..6)
        .map(|i| submit(&handle, rows(1, 1, i as f32), None, None))
        .collect();
    settle().await;
    let first = batches.recv().await.unwrap();
    assert_eq!(first.rows(), 4);
    assert_eq!(tags(&first), vec![0.0, 1.0, 2.0, 3.0]);
    echo(first);
    // The other 2 rows wait for the delay.
    let second = batches.recv().await.unwrap();
    assert_eq!(second.rows(), 2);
    assert_eq!(started.elapsed(), Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn an_idle_instance_takes_work_without_waiting() {
    let (handle, mut batches) = start(settings(
        Some(batching(1000, vec![], true)),
        queue(64, 1),
        8,
    ));
    let started = Instant::now();
    let reply = submit(&handle, rows(1, 1, 7.0), None, None);
    let batch = batches.recv().await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "no delay at low load");
    echo(batch);
    assert!(reply.await.unwrap().is_ok());
    // While the instance is busy, requests gather into the next batch.
    let _a = submit(&handle, rows(1, 1, 1.0), None, None);
    let busy = batches.recv().await.unwrap();
    let _b = submit(&handle, rows(1, 1, 2.0), None, None);
    let _c = submit(&handle, rows(1, 1, 3.0), None, None);
    settle().await;
    // Nothing is handed ahead to a busy instance.
    assert!(batches.try_recv().is_err());
    echo(busy);
    let gathered = batches.recv().await.unwrap();
    assert_eq!(tags(&gathered), vec![2.0, 3.0]);
}

#[tokio::test(start_paused = true)]
async fn priorities_are_strict_and_fifo_within_a_level() {
    // No merging: one request per batch, so order is visible.
    let (handle, mut batches) = start(settings(None, queue(64, 2), 1));
    let _first = submit(&handle, rows(1, 1, 0.0), Some(2), None);
    settle().await; // formed, waiting in the hand-off slot
    let _low1 = submit(&handle, rows(1, 1, 1.0), Some(2), None);
    let _low2 = submit(&handle, rows(1, 1, 2.0), Some(2), None);
    settle().await;
    let _high = submit(&handle, rows(1, 1, 3.0), Some(1), None);
    settle().await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let batch = batches.recv().await.unwrap();
        order.push(tags(&batch)[0]);
        echo(batch);
    }
    assert_eq!(order, vec![0.0, 3.0, 1.0, 2.0]);
}

#[tokio::test(start_paused = true)]
async fn a_full_level_refuses_at_once_and_bad_priorities_are_errors() {
    let (handle, _batches) = start(settings(None, queue(2, 2), 1));
    let _in_slot = submit(&handle, rows(1, 1, 0.0), None, None);
    settle().await;
    let _q1 = submit(&handle, rows(1, 1, 0.0), None, None);
    let _q2 = submit(&handle, rows(1, 1, 0.0), None, None);
    settle().await;
    let started = Instant::now();
    let refused = submit(&handle, rows(1, 1, 0.0), None, None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Overloaded);
    assert!(
        refused.message.contains("queue of 2 requests is full"),
        "{}",
        refused.message
    );
    assert_eq!(started.elapsed(), Duration::ZERO);
    // The other level still has room.
    let other = submit(&handle, rows(1, 1, 0.0), Some(1), None);
    settle().await;
    assert!(!other.is_finished());
    let bad = submit(&handle, rows(1, 1, 0.0), Some(3), None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(bad.kind, ErrorKind::InvalidArgument);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_fires_at_its_deadline_even_while_a_long_batch_runs() {
    let (handle, mut batches) = start(settings(Some(batching(0, vec![], true)), queue(64, 1), 8));
    let started = Instant::now();
    let reply = submit(&handle, rows(1, 1, 0.0), None, Some(5));
    let running = batches.recv().await.unwrap();
    // The worker holds the batch for 50 ms; the request is answered at 5 ms.
    let err = reply.await.unwrap().unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(5));
    assert_eq!(err.kind, ErrorKind::DeadlineExceeded);
    tokio::time::sleep(Duration::from_millis(45)).await;
    echo(running);
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_expires_by_timer_and_leaves_the_queue() {
    let (handle, mut batches) = start(settings(None, queue(64, 1), 1));
    let _busy = submit(&handle, rows(1, 1, 0.0), None, None);
    settle().await;
    let started = Instant::now();
    let waiting = submit(&handle, rows(1, 1, 1.0), None, Some(5));
    settle().await;
    assert_eq!(handle.queue_depth(), 1);
    let err = waiting.await.unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::DeadlineExceeded);
    assert_eq!(started.elapsed(), Duration::from_millis(5));
    settle().await;
    assert_eq!(handle.queue_depth(), 0, "expired requests leave the queue");
    // It never reaches a worker.
    let first = batches.recv().await.unwrap();
    echo(first);
    settle().await;
    assert!(batches.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn the_overloaded_timeout_action_answers_429() {
    let mut policy = queue(64, 1);
    policy.timeout_action = TimeoutAction::Overloaded;
    policy.default_timeout = Some(Duration::from_millis(3));
    let (handle, _batches) = start(settings(None, policy, 1));
    let _busy = submit(&handle, rows(1, 1, 0.0), None, None);
    // Asking for more than the default gets the default.
    let err = submit(&handle, rows(1, 1, 0.0), None, Some(100))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Overloaded);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_is_removed_unrun() {
    let (handle, mut batches) = start(settings(None, queue(64, 1), 1));
    let _busy = submit(&handle, rows(1, 1, 0.0), None, None);
    settle().await;
    let gone = submit(&handle, rows(1, 1, 1.0), None, None);
    let kept = submit(&handle, rows(1, 1, 2.0), None, None);
    settle().await;
    assert_eq!(handle.queue_depth(), 2);
    gone.abort();
    tokio::time::sleep(SWEEP_INTERVAL * 2).await;
    assert_eq!(handle.queue_depth(), 1, "swept out while still queued");
    let first = batches.recv().await.unwrap();
    echo(first);
    let next = batches.recv().await.unwrap();
    assert_eq!(tags(&next), vec![2.0]);
    echo(next);
    assert!(kept.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn different_shapes_never_share_a_batch() {
    let (handle, mut batches) = start(settings(Some(batching(1, vec![], false)), queue(64, 1), 16));
    let a = submit(&handle, rows(1, 3, 1.0), None, None);
    let b = submit(&handle, rows(2, 4, 2.0), None, None);
    let c = submit(&handle, rows(1, 3, 3.0), None, None);
    let first = batches.recv().await.unwrap();
    assert_eq!(first.joined_inputs().unwrap()[0].shape(), &[2, 3]);
    assert_eq!(tags(&first), vec![1.0, 3.0]);
    echo(first);
    let second = batches.recv().await.unwrap();
    assert_eq!(second.joined_inputs().unwrap()[0].shape(), &[2, 4]);
    echo(second);
    for reply in [a, b, c] {
        assert!(reply.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn padding_merges_lengths_and_cuts_outputs_back() {
    let mut config = batching(1, vec![], false);
    config.padding = Padding {
        inputs: BTreeMap::from([(
            "x".to_owned(),
            PadInput {
                dim: 1,
                value: -1.0,
            },
        )]),
        outputs: BTreeMap::new(),
    };
    let mut s = settings(Some(config), queue(64, 1), 16);
    s.cut_outputs = vec![("y".into(), 1, 0)];
    let (handle, mut batches) = start(s);
    let short = submit(&handle, rows(1, 2, 1.0), None, None);
    let long = submit(&handle, rows(1, 4, 2.0), None, None);
    let batch = batches.recv().await.unwrap();
    let joined = batch.joined_inputs().unwrap();
    assert_eq!(joined[0].shape(), &[2, 4]);
    assert_eq!(
        joined[0].as_slice::<f32>().as_ref(),
        &[1.0, 1.0, -1.0, -1.0, 2.0, 2.0, 2.0, 2.0]
    );
    echo(batch);
    let short = short.await.unwrap().unwrap();
    assert_eq!(short[0].shape(), &[1, 2]);
    assert_eq!(short[0].as_slice::<f32>().as_ref(), &[1.0, 1.0]);
    assert_eq!(long.await.unwrap().unwrap()[0].shape(), &[1, 4]);
}

#[tokio::test(start_paused = true)]
async fn outputs_split_row_exactly_and_errors_reach_everyone() {
    let (handle, mut batches) = start(settings(Some(batching(1, vec![], false)), queue(64, 1), 16));
    let replies: Vec<_> = [1usize, 3, 2]
        .iter()
        .enumerate()
        .map(|(i, &n)| submit(&handle, rows(n, 1, i as f32), None, None))
        .collect();
    let batch = batches.recv().await.unwrap();
    assert_eq!(batch.rows(), 6);
    echo(batch);
    for (i, (reply, n)) in replies.into_iter().zip([1usize, 3, 2]).enumerate() {
        let out = reply.await.unwrap().unwrap();
        assert_eq!(
            out[0].as_slice::<f32>().as_ref(),
            vec![i as f32; n].as_slice()
        );
    }
    let a = submit(&handle, rows(1, 1, 0.0), None, None);
    let b = submit(&handle, rows(1, 1, 0.0), None, None);
    let batch = batches.recv().await.unwrap();
    batch.complete(Err(ApiError::internal("boom")));
    assert_eq!(a.await.unwrap().unwrap_err().message, "boom");
    assert_eq!(b.await.unwrap().unwrap_err().message, "boom");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_drains_the_queue_then_stops() {
    let (handle, mut batches) = start(settings(None, queue(64, 1), 1));
    let replies: Vec<_> = (0..3)
        .map(|i| submit(&handle, rows(1, 1, i as f32), None, None))
        .collect();
    settle().await;
    drop(handle);
    for _ in 0..3 {
        echo(batches.recv().await.unwrap());
    }
    assert!(
        batches.recv().await.is_none(),
        "the channel closes once drained"
    );
    for reply in replies {
        assert!(reply.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn zero_row_requests_are_answered_batching_on_and_off() {
    for batching in [None, Some(batching(5, vec![], false))] {
        let (handle, mut batches) = start(settings(batching.clone(), queue(8, 1), 8));
        // Alone: the batch holds no rows but still goes to the runtime.
        let empty = submit(&handle, rows(0, 3, 0.0), None, None);
        let batch = batches
            .recv()
            .await
            .expect("a zero-row request forms a batch");
        assert_eq!((batch.rows(), batch.len()), (0, 1));
        echo(batch);
        let answer = empty.await.unwrap().unwrap();
        assert_eq!(answer[0].shape(), &[0, 3]);
        // Beside rows of others: each gets its own share back.
        let a = submit(&handle, rows(2, 3, 1.0), None, None);
        let b = submit(&handle, rows(0, 3, 0.0), None, None);
        let c = submit(&handle, rows(1, 3, 2.0), None, None);
        settle().await;
        while let Ok(Some(batch)) =
            tokio::time::timeout(Duration::from_millis(50), batches.recv()).await
        {
            echo(batch);
        }
        let shapes: Vec<Vec<i64>> = [a, b, c]
            .into_iter()
            .map(|reply| async { reply.await.unwrap().unwrap()[0].shape().to_vec() })
            .collect::<futures::future::JoinAll<_>>()
            .await;
        assert_eq!(
            shapes,
            vec![vec![2, 3], vec![0, 3], vec![1, 3]],
            "{batching:?}"
        );
        drop(handle);
        assert!(batches.recv().await.is_none(), "nothing is left behind");
    }
}

#[tokio::test(start_paused = true)]
async fn the_server_bound_fails_a_request_no_one_answers() {
    let mut policy = queue(4, 1);
    policy.max_request_time = Duration::from_secs(2);
    let (handle, mut batches) = start(settings(None, policy, 8));
    // Running: the worker holds the batch and never completes it.
    let running = submit(&handle, rows(1, 1, 0.0), None, None);
    let held = batches.recv().await.unwrap();
    // Queued behind it.
    let queued = submit(&handle, rows(1, 1, 1.0), None, None);
    settle().await;
    tokio::time::advance(Duration::from_millis(2001)).await;
    for reply in [running, queued] {
        let err = reply.await.unwrap().unwrap_err();
        assert_eq!(err.kind, ErrorKind::DeadlineExceeded);
        assert!(err.message.contains("server's bound"), "{}", err.message);
    }
    assert_eq!(handle.queue_depth(), 0, "the queued request left the queue");
    drop(held);
    // A shorter timeout of the request's own is still its own.
    let own = submit(&handle, rows(1, 1, 0.0), None, Some(5));
    let _held = batches.recv().await.unwrap();
    tokio::time::advance(Duration::from_millis(6)).await;
    let err = own.await.unwrap().unwrap_err();
    assert!(err.message.contains("timeout passed"), "{}", err.message);
}

#[test]
fn adaptive_delay_waits_only_when_it_pays() {
    // 2 ms fixed cost + 10 µs per row: batching pays a lot.
    let table: Vec<(usize, f64)> = [1usize, 8, 32, 128]
        .iter()
        .map(|&b| (b, 0.002 + b as f64 * 10e-6))
        .collect();
    let busy = Adaptive::seeded(20_000.0, table.clone());
    let wait = busy.delay(
        1,
        Duration::ZERO,
        Duration::from_millis(20),
        Duration::from_micros(100),
    );
    assert!(wait > Duration::ZERO, "worth waiting at 20k rows/s");
    // Within budget: never waits past it.
    let tight = busy.delay(
        1,
        Duration::from_millis(19),
        Duration::from_millis(20),
        Duration::from_micros(100),
    );
    assert_eq!(tight, Duration::ZERO);
    // Almost no traffic: waiting gathers nobody.
    let quiet = Adaptive::seeded(1.0, table);
    assert_eq!(
        quiet.delay(
            1,
            Duration::ZERO,
            Duration::from_millis(20),
            Duration::from_micros(100)
        ),
        Duration::ZERO
    );
    // No estimates yet: the fixed delay.
    let fresh = Adaptive::default();
    assert_eq!(
        fresh.delay(
            1,
            Duration::ZERO,
            Duration::from_millis(20),
            Duration::from_micros(100)
        ),
        Duration::from_micros(100)
    );
}

#[tokio::test(start_paused = true)]
async fn a_lone_request_skips_the_queue_only_when_nothing_waits() {
    let (handle, mut batches) = start(settings(None, queue(64, 1), 1));
    // Idle and nothing queued: straight to the instance.
    let _a = submit(&handle, rows(1, 1, 0.0), None, None);
    let a = batches.recv().await.unwrap();
    assert_eq!(handle.queue_depth(), 0);
    // Busy: nothing is handed ahead; both wait in the queue...
    let _b = submit(&handle, rows(1, 1, 1.0), None, None);
    settle().await;
    let _c = submit(&handle, rows(1, 1, 2.0), None, None);
    settle().await;
    assert_eq!(handle.queue_depth(), 2, "b and c wait in the queue");
    assert!(batches.try_recv().is_err());
    // ...and the instance that finishes takes them itself, in order.
    let mut next = a.complete_and_take_next(Ok(vec![]));
    for tag in [1.0, 2.0] {
        let batch = next.take().expect("the next batch, without a hand-off");
        assert_eq!(tags(&batch), vec![tag]);
        let output = batch.joined_inputs().unwrap()[0].clone().with_name("y");
        next = batch.complete_and_take_next(Ok(vec![output]));
    }
    assert!(next.is_none(), "nothing left to take");
    assert!(batches.try_recv().is_err(), "nothing was handed off either");
    settle().await;
    let d = submit(&handle, rows(1, 1, 3.0), None, None);
    let batch = batches.recv().await.unwrap();
    assert_eq!(tags(&batch), vec![3.0]);
    echo(batch);
    assert!(d.await.unwrap().is_ok());
    assert_eq!(handle.queue_depth(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_finishing_instance_takes_the_batch_that_came_due_while_it_ran() {
    // A delay that passes while the only instance is busy: the batch forms
    // when it finishes, with everything that arrived meanwhile.
    let (handle, mut batches) = start(settings(Some(batching(5, vec![], false)), queue(64, 1), 8));
    let _first = submit(&handle, rows(1, 1, 0.0), None, None);
    let first = batches.recv().await.unwrap();
    let replies: Vec<_> = (1..4)
        .map(|i| submit(&handle, rows(1, 1, i as f32), None, None))
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(batches.try_recv().is_err(), "no instance was free for it");
    let output = first.joined_inputs().unwrap()[0].clone().with_name("y");
    let next = first
        .complete_and_take_next(Ok(vec![output]))
        .expect("due: taken by the instance that finished");
    assert_eq!(tags(&next), vec![1.0, 2.0, 3.0]);
    echo(next);
    for reply in replies {
        assert!(reply.await.unwrap().is_ok());
    }
}

/// The queue under real threads: whatever the batching settings, instance
/// count and mix of requests (zero rows, two shapes, two priorities), every
/// request is answered once with its own rows, no batch exceeds the maximum,
/// no more batches run at once than there are instances, nothing is left
/// queued, and once the handle is gone the workers stop.
#[test]
fn every_request_is_answered_with_its_own_rows_under_real_threads() {
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let config = ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        instances in 1usize..=3,
        mode in 0u8..4,
        requests in proptest::collection::vec((0usize..=4, 1u32..=2, 1usize..=2), 1..60),
        run_us in 0u64..200,
    )| {
        let batching = match mode {
            0 => None,
            1 => Some(batching(1, vec![], true)),
            2 => Some(batching(1, vec![4], false)),
            _ => Some(batching(0, vec![2, 8], true)),
        };
        let mut settings = settings(batching, queue(1024, 2), 8);
        settings.instances = instances;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (handle, batches) = start(settings);
            let batches = Arc::new(std::sync::Mutex::new(batches));
            let running = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..instances)
                .map(|_| {
                    let (batches, running) = (batches.clone(), running.clone());
                    std::thread::spawn(move || {
                        let mut next: Option<Batch> = None;
                        loop {
                            let batch = match next.take() {
                                Some(batch) => batch,
                                None => match batches.lock().unwrap().blocking_recv() {
                                    Some(batch) => batch,
                                    None => break,
                                },
                            };
                            let at_once = running.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(at_once <= instances, "{at_once} batches at once on {instances} instances");
                            assert!(batch.rows() <= 8, "a batch of {} rows", batch.rows());
                            std::thread::sleep(Duration::from_micros(run_us));
                            running.fetch_sub(1, Ordering::SeqCst);
                            let output = batch.joined_inputs().unwrap()[0].clone().with_name("y");
                            next = batch.complete_and_take_next(Ok(vec![output]));
                        }
                    })
                })
                .collect();
            let replies: Vec<_> = requests
                .iter()
                .enumerate()
                .map(|(i, &(n, priority, width))| {
                    (i, n, width, submit(&handle, rows(n, width, i as f32), Some(priority), None))
                })
                .collect();
            for (i, n, width, reply) in replies {
                let outputs = reply.await.unwrap().expect("every request is answered");
                assert_eq!(outputs[0].shape(), &[n as i64, width as i64]);
                assert!(outputs[0].as_slice::<f32>().iter().all(|&v| v == i as f32), "request {i} got another's rows");
            }
            assert_eq!(handle.queue_depth(), 0);
            drop(handle);
            let stopped = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::task::spawn_blocking(move || workers.into_iter().map(|w| w.join().is_ok()).collect::<Vec<_>>()),
            )
            .await
            .expect("the workers stop once the handle is gone")
            .unwrap();
            assert!(stopped.iter().all(|&ok| ok), "a worker's check failed");
        });
    });
}
