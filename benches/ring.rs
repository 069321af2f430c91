//! Broadcast ring throughput, shaped like the server: two threads (two workers), each owning one
//! consumer cursor; one or both also publish, and publish-then-drain in turns as a worker does.
//! Every consumer reads every item; criterion counts each item once.
//!
//! `cargo bench --bench ring`. Items are `u64` so that the figure is the ring's own cost (the
//! server's `Arc<Message>` allocation and refcounts are measured by the fan-out benchmark).

use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fanout::server::ring::{Consumer, Producer, Ring};

const ITEMS: u64 = 1 << 22;
const SLOTS: usize = 1 << 14;
const BURST: u64 = 256;

/// A worker's turn loop: publish up to BURST of its share (if it has one), then drain.
fn worker(mut producer: Option<Producer<u64>>, mut consumer: Consumer<u64>, share: u64) {
    let mut published = 0;
    let mut seen = 0;
    let mut checksum = 0u64;
    while seen < ITEMS {
        if let Some(producer) = producer.as_mut() {
            let end = (published + BURST).min(share);
            while published < end && producer.try_publish(published).is_ok() {
                published += 1;
            }
        }
        let n = consumer.poll(BURST as usize, |item| checksum = checksum.wrapping_add(item));
        if n == 0 {
            thread::yield_now();
        }
        seen += n as u64;
    }
    std::hint::black_box(checksum);
}

fn run(producers: u64) -> Duration {
    let (producer, mut consumers) = Ring::<u64>::with_consumers(SLOTS, 2);
    let second = consumers.pop().unwrap();
    let first = consumers.pop().unwrap();
    let start = Instant::now();
    let other = {
        let producer = (producers == 2).then(|| producer.clone());
        thread::spawn(move || worker(producer, second, ITEMS / 2))
    };
    worker(Some(producer), first, ITEMS / producers);
    other.join().unwrap();
    start.elapsed()
}

fn ring(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(10);
    for producers in [1, 2] {
        group.bench_function(format!("{producers}_producer_2_consumers"), |b| {
            b.iter_custom(|iterations| (0..iterations).map(|_| run(producers)).sum())
        });
    }
    group.bench_function("1_producer_1_consumer_same_thread", |b| {
        let (mut producer, mut consumers) = Ring::<u64>::with_consumers(SLOTS, 1);
        b.iter_custom(|iterations| {
            let start = Instant::now();
            for _ in 0..iterations {
                for _ in 0..ITEMS / BURST {
                    for i in 0..BURST {
                        let _ = producer.try_publish(i);
                    }
                    consumers[0].poll(BURST as usize, |i| {
                        std::hint::black_box(i);
                    });
                }
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, ring);
criterion_main!(benches);
