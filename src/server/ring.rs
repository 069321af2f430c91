//! The shared broadcast ring: many producers (any worker), every consumer (one per worker) sees
//! every item, in one global order.
//!
//! This is the multi-producer Disruptor (LMAX, "Disruptor: High performance alternative to bounded
//! queues", 2011) reduced to what fanout needs:
//!
//! - a power-of-two array of slots, addressed by `sequence & index_mask`;
//! - producers claim a sequence with a CAS on `claimed`, but only when every consumer has already
//!   read the item that last lived in that slot (`sequence < min(cursors) + capacity`); otherwise
//!   `try_publish` hands the item back (`Err(item)`) and the caller applies backpressure. The ring
//!   never overwrites an unread slot and never blocks;
//! - a slot is published by storing its sequence number with `Release` after the item is written;
//!   a consumer reads slot `c` only when it sees `sequence == c` with `Acquire`. Because claims are
//!   made in order but may be written out of order, a consumer stops at the first unpublished slot
//!   and resumes there on its next poll;
//! - each slot counts the consumers that still have to read it; the last one drops the slot's copy,
//!   so an item's memory is released as soon as every worker has seen it, not when the slot is
//!   reused.
//!
//! Wake-ups are not the ring's business: the server pairs every publish with a coalescing
//! `mio::Waker` (see `server::Shared::wake_others`).

use std::fmt;
use std::sync::atomic::Ordering;

pub(crate) use self::primitive::Arc;
use self::primitive::{AtomicU64, AtomicUsize, UnsafeCell};

/// The synchronisation primitives the ring is built on: std's, or loom's when the crate is built
/// with `--cfg loom` so that the model in `loom_model` can explore every interleaving of the
/// claim/publish/read/release protocol (as crossbeam does for its queues).
mod primitive {
    #[cfg(loom)]
    pub(crate) use loom::{
        cell::UnsafeCell,
        sync::atomic::{AtomicU64, AtomicUsize},
        sync::Arc,
    };
    #[cfg(not(loom))]
    pub(crate) use std::sync::{
        atomic::{AtomicU64, AtomicUsize},
        Arc,
    };

    /// std's `UnsafeCell` with loom's access API (`with`, `with_mut`), which lets loom check
    /// that no read overlaps a write.
    #[cfg(not(loom))]
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    #[cfg(not(loom))]
    impl<T> UnsafeCell<T> {
        pub(crate) fn new(value: T) -> Self {
            UnsafeCell(std::cell::UnsafeCell::new(value))
        }

        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

/// Aligns (and so pads) a value to 128 bytes, two cache lines, so that atomics written by
/// different cores never share a line (adjacent-line prefetch pulls pairs on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CachePadded<T>(pub T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Sequence stamp of a slot that has never been published. No real sequence reaches it.
const NEVER_PUBLISHED: u64 = u64::MAX;

struct Slot<T> {
    /// The sequence of the item in `value` once it is fully written (stored with `Release` after
    /// the write), or an older sequence / `NEVER_PUBLISHED` while the slot is being (re)filled.
    sequence: AtomicU64,
    /// Consumers that have not yet cloned `value`. Set by the producer before publishing; the
    /// consumer that brings it to zero takes `value` out, which drops the ring's copy.
    readers_left: AtomicUsize,
    /// Written only by the producer that claimed the slot's current sequence, and only after every
    /// consumer's cursor passed the previous occupant; read (cloned) by consumers only after they
    /// observed `sequence` equal to their cursor.
    value: UnsafeCell<Option<T>>,
}

/// The ring itself; shared through `Arc` by its `Producer`s and `Consumer`s.
pub struct Ring<T> {
    slots: Box<[Slot<T>]>,
    /// `capacity - 1`; capacity is a power of two, so `sequence & index_mask` is the slot index.
    index_mask: u64,
    /// The next sequence a producer will claim. Every sequence below it is claimed; a claimed
    /// sequence is published (readable) once its slot's `sequence` equals it.
    claimed: CachePadded<AtomicU64>,
    /// One per consumer: the next sequence that consumer will read. Only that consumer stores it
    /// (`Release`, after it is done with every earlier slot); producers load it (`Acquire`) to know
    /// which slots they may reuse.
    cursors: Box<[CachePadded<AtomicU64>]>,
}

// SAFETY: `Ring` hands items from producer threads to consumer threads (needs `T: Send`) and several
// consumers clone the same item through a shared reference at once (needs `T: Sync`). All access to
// `Slot::value` follows the claim/publish/cursor protocol described on the fields: a slot is
// written by exactly one producer while no consumer may read it, and read only after its
// publication was observed with Acquire.
unsafe impl<T: Send + Sync> Sync for Ring<T> {}
// SAFETY: as above; owning a `Ring` owns its `T`s, which may be dropped on any thread.
unsafe impl<T: Send + Sync> Send for Ring<T> {}

impl<T> fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity())
            .field("claimed", &self.claimed.load(Ordering::Relaxed))
            .field("consumers", &self.cursors.len())
            .finish()
    }
}

impl<T: Clone + Send + Sync> Ring<T> {
    /// Builds a ring of `capacity` slots (rounded up to a power of two, at least 2) read by exactly
    /// `consumers` consumers, and returns one producer (clone it for more) and the consumers.
    pub fn with_consumers(capacity: usize, consumers: usize) -> (Producer<T>, Vec<Consumer<T>>) {
        assert!(consumers > 0, "a broadcast ring needs at least one consumer");
        let capacity = capacity.max(2).next_power_of_two();
        let slots = (0..capacity)
            .map(|_| Slot {
                sequence: AtomicU64::new(NEVER_PUBLISHED),
                readers_left: AtomicUsize::new(0),
                value: UnsafeCell::new(None),
            })
            .collect();
        let cursors = (0..consumers).map(|_| CachePadded(AtomicU64::new(0))).collect();
        let ring = Arc::new(Ring {
            slots,
            index_mask: capacity as u64 - 1,
            claimed: CachePadded(AtomicU64::new(0)),
            cursors,
        });
        let consumers =
            (0..consumers).map(|id| Consumer { ring: ring.clone(), id, next: 0 }).collect();
        (Producer { ring, gate: 0 }, consumers)
    }
}

impl<T> Ring<T> {
    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.index_mask + 1
    }

    /// The lowest consumer cursor: every sequence below it has been read by every consumer.
    fn min_cursor(&self) -> u64 {
        self.cursors.iter().map(|c| c.load(Ordering::Acquire)).min().unwrap_or(0)
    }

    /// Items claimed but not yet read by the slowest consumer.
    pub fn backlog(&self) -> u64 {
        self.claimed.load(Ordering::Relaxed).saturating_sub(self.min_cursor())
    }
}

/// Publishes into the ring. Cheap to clone; each clone keeps its own cache of the consumers' gate.
pub struct Producer<T> {
    ring: Arc<Ring<T>>,
    /// A past value of `ring.min_cursor()`. Cursors only grow, so it is a safe lower bound; it is
    /// refreshed only when it would forbid a claim, which keeps the consumers' cache lines quiet.
    gate: u64,
}

impl<T> Clone for Producer<T> {
    fn clone(&self) -> Self {
        Producer { ring: self.ring.clone(), gate: self.gate }
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer").field("ring", &self.ring).field("gate", &self.gate).finish()
    }
}

impl<T: Clone + Send + Sync> Producer<T> {
    /// Appends `item` and returns its sequence, or hands it back when the ring is full (some
    /// consumer has not yet read the item `capacity` places back). Never blocks, never overwrites.
    pub fn try_publish(&mut self, item: T) -> Result<u64, T> {
        let ring = &*self.ring;
        let capacity = ring.capacity();
        let mut seq = ring.claimed.load(Ordering::Relaxed);
        loop {
            if seq >= self.gate + capacity {
                self.gate = ring.min_cursor();
                if seq >= self.gate + capacity {
                    return Err(item);
                }
            }
            match ring.claimed.compare_exchange_weak(
                seq,
                seq + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(current) => seq = current,
            }
        }
        let slot = &ring.slots[(seq & ring.index_mask) as usize];
        debug_assert_ne!(slot.sequence.load(Ordering::Relaxed), seq, "slot claimed twice");
        // SAFETY: we own sequence `seq` (the CAS above succeeded for us alone). Its slot last held
        // `seq - capacity`, and `seq < gate + capacity` with `gate` loaded (Acquire) from every
        // consumer's cursor means each consumer had finished with that item and stored its cursor
        // with Release after its last access; the last of them took the value out. So no consumer
        // reads this slot until we publish `seq` below, and no other producer can claim it until
        // the cursors pass `seq`.
        slot.value.with_mut(|value| unsafe {
            debug_assert!((*value).is_none(), "slot reused before every consumer read it");
            *value = Some(item);
        });
        slot.readers_left.store(ring.cursors.len(), Ordering::Relaxed);
        slot.sequence.store(seq, Ordering::Release);
        Ok(seq)
    }

    /// The ring this producer publishes into.
    pub fn ring(&self) -> &Ring<T> {
        &self.ring
    }
}

/// Reads every published item, in sequence order, from its own cursor.
pub struct Consumer<T> {
    ring: Arc<Ring<T>>,
    /// Index of this consumer's cursor in `ring.cursors`; unique per consumer.
    id: usize,
    /// The next sequence to read (our own copy of `ring.cursors[id]`, which we alone store).
    next: u64,
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").field("id", &self.id).field("next", &self.next).finish()
    }
}

impl<T: Clone + Send + Sync> Consumer<T> {
    /// Hands up to `max` published items to `deliver`, in order, and returns how many it handed.
    /// Stops early at the first slot that is claimed but not yet published.
    pub fn poll(&mut self, max: usize, mut deliver: impl FnMut(T)) -> usize {
        let ring = &*self.ring;
        let start = self.next;
        let mut seq = start;
        while seq - start < max as u64 {
            let slot = &ring.slots[(seq & ring.index_mask) as usize];
            if slot.sequence.load(Ordering::Acquire) != seq {
                break;
            }
            // SAFETY: observing `sequence == seq` with Acquire makes the producer's write of `value`
            // visible. The slot cannot be rewritten before our cursor passes `seq` (which we store
            // only below), and it cannot be taken out before we decrement `readers_left`. Other
            // consumers may clone it concurrently: shared reads of a `T: Sync`.
            let item = slot.value.with(|value| unsafe { (*value).clone() });
            if slot.readers_left.fetch_sub(1, Ordering::AcqRel) == 1 {
                // SAFETY: we were the last reader: every other consumer's clone happened before its
                // decrement (Release), which our AcqRel decrement synchronises with, and no producer
                // may write the slot before our cursor moves past `seq`. So this is the only access.
                drop(slot.value.with_mut(|value| unsafe { (*value).take() }));
            }
            match item {
                Some(item) => deliver(item),
                None => unreachable!("published slot {seq} holds no item"),
            }
            seq += 1;
        }
        if seq != start {
            self.next = seq;
            ring.cursors[self.id].store(seq, Ordering::Release);
        }
        (seq - start) as usize
    }

    /// True when this consumer has read every claimed sequence, i.e. nothing is in flight for it.
    pub fn caught_up(&self) -> bool {
        self.ring.claimed.load(Ordering::Acquire) == self.next
    }

    /// The next sequence this consumer will read.
    pub fn position(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn full_ring_hands_the_item_back_and_keeps_unread_items() {
        let (mut producer, mut consumers) = Ring::<u32>::with_consumers(4, 1);
        for i in 0..4 {
            assert_eq!(producer.try_publish(i), Ok(i as u64));
        }
        assert_eq!(producer.try_publish(99), Err(99), "a full ring must refuse, not overwrite");
        let mut seen = Vec::new();
        assert_eq!(consumers[0].poll(1, |v| seen.push(v)), 1);
        assert_eq!(producer.try_publish(4), Ok(4));
        assert_eq!(producer.try_publish(100), Err(100));
        consumers[0].poll(usize::MAX, |v| seen.push(v));
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert!(consumers[0].caught_up());
    }

    #[test]
    fn the_slowest_consumer_gates_the_producer() {
        let (mut producer, mut consumers) = Ring::<u32>::with_consumers(2, 2);
        producer.try_publish(1).unwrap();
        producer.try_publish(2).unwrap();
        consumers[0].poll(10, |_| {});
        assert_eq!(producer.try_publish(3), Err(3), "consumer 1 has not read anything yet");
        consumers[1].poll(1, |_| {});
        assert_eq!(producer.try_publish(3), Ok(2));
    }

    #[test]
    fn the_last_reader_releases_the_item() {
        let (mut producer, mut consumers) = Ring::<Arc<u8>>::with_consumers(8, 2);
        let item = Arc::new(7);
        producer.try_publish(item.clone()).unwrap();
        assert_eq!(Arc::strong_count(&item), 2);
        consumers[0].poll(1, drop);
        assert_eq!(Arc::strong_count(&item), 2, "consumer 1 has yet to read it");
        consumers[1].poll(1, drop);
        assert_eq!(Arc::strong_count(&item), 1, "the ring must not keep read items alive");
    }

    #[test]
    fn dropping_the_ring_drops_unread_items() {
        let item = Arc::new(1);
        {
            let (mut producer, _consumers) = Ring::<Arc<u8>>::with_consumers(8, 1);
            producer.try_publish(item.clone()).unwrap();
        }
        assert_eq!(Arc::strong_count(&item), 1);
    }

    /// 4 producers and 4 consumers move 1,000,000 items through a small ring (so it is full most of
    /// the time). Every consumer must see every item exactly once, and each producer's items in the
    /// order it published them.
    #[test]
    fn stress_four_producers_four_consumers_one_million() {
        const PRODUCERS: u64 = 4;
        const CONSUMERS: usize = 4;
        // Miri interprets every instruction: a smaller run, with a ring small enough to wrap.
        const PER_PRODUCER: u64 = if cfg!(miri) { 150 } else { 250_000 };
        const TOTAL: u64 = PRODUCERS * PER_PRODUCER;
        let capacity = if cfg!(miri) { 8 } else { 1024 };
        let (producer, consumers) = Ring::<u64>::with_consumers(capacity, CONSUMERS);

        let readers: Vec<_> = consumers
            .into_iter()
            .map(|mut consumer| {
                thread::spawn(move || {
                    let mut next_expected = [0u64; PRODUCERS as usize];
                    let mut received = 0u64;
                    let mut idle_spins = 0u64;
                    while received < TOTAL {
                        let n = consumer.poll(256, |item| {
                            let (producer, index) = ((item >> 32) as usize, item & 0xffff_ffff);
                            assert_eq!(
                                index, next_expected[producer],
                                "producer {producer}: out of order, duplicated or lost"
                            );
                            next_expected[producer] += 1;
                        });
                        received += n as u64;
                        if n == 0 {
                            idle_spins += 1;
                            assert!(idle_spins < 50_000_000, "consumer starved at {received}");
                            thread::yield_now();
                        }
                    }
                    assert!(next_expected.iter().all(|&n| n == PER_PRODUCER));
                    assert!(consumer.caught_up());
                    received
                })
            })
            .collect();

        let writers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let mut producer = producer.clone();
                thread::spawn(move || {
                    let mut full = 0u64;
                    for i in 0..PER_PRODUCER {
                        let mut item = (p << 32) | i;
                        while let Err(back) = producer.try_publish(item) {
                            item = back;
                            full += 1;
                            thread::yield_now();
                        }
                    }
                    full
                })
            })
            .collect();

        for writer in writers {
            writer.join().expect("producer panicked");
        }
        for reader in readers {
            assert_eq!(reader.join().expect("consumer panicked"), TOTAL);
        }
        assert_eq!(producer.ring().backlog(), 0);
    }
}

/// A loom model of the ring: every interleaving (within loom's bounds) of producers claiming and
/// publishing, consumers reading and the last reader releasing, on a ring small enough to wrap.
/// Run with `scripts/verify-ring.sh` (`RUSTFLAGS="--cfg loom" cargo test --lib loom_model`).
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::thread;

    /// Publishes `item`, yielding to the model while the ring is full.
    fn publish(producer: &mut Producer<Arc<u32>>, item: u32) {
        let mut item = Arc::new(item);
        loop {
            match producer.try_publish(item) {
                Ok(_) => return,
                Err(back) => {
                    item = back;
                    thread::yield_now();
                }
            }
        }
    }

    /// Explores the model with at most `LOOM_PREEMPTIONS` forced thread switches per execution
    /// (loom's recommended bound: bugs need few preemptions, and spinning on a full ring would
    /// otherwise make the space unbounded). Override with the LOOM_MAX_PREEMPTIONS variable.
    fn check(model: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        // A spinning thread adds branches at every retry; the default (1,000) is for spin-free code.
        builder.max_branches = 100_000;
        builder.check(model);
    }

    /// Reads `count` items, yielding while none is published.
    fn read(consumer: &mut Consumer<Arc<u32>>, count: usize) -> Vec<u32> {
        // (Only ever asked for items that are published or about to be: no unbounded spin.)
        let mut seen = Vec::new();
        while seen.len() < count {
            if consumer.poll(count - seen.len(), |item| seen.push(*item)) == 0 {
                thread::yield_now();
            }
        }
        seen
    }

    /// The slot of item 0 is reused for item 2 while both consumers may still be reading items
    /// 0 and 1: the publish succeeds only once both have passed item 0, and whatever the
    /// interleaving each consumer sees 0, 1, 2 and the ring holds nothing afterwards.
    #[test]
    fn a_slot_is_reused_only_after_every_consumer_read_it() {
        check(|| {
            let (mut producer, consumers) = Ring::with_consumers(2, 2);
            producer.try_publish(Arc::new(0)).unwrap();
            producer.try_publish(Arc::new(1)).unwrap();
            let readers: Vec<_> = consumers
                .into_iter()
                .map(|mut consumer| {
                    thread::spawn(move || {
                        let seen = read(&mut consumer, 2);
                        (consumer, seen)
                    })
                })
                .collect();
            let early = producer.try_publish(Arc::new(2)).is_ok();
            let mut consumers = Vec::new();
            for reader in readers {
                let (consumer, seen) = reader.join().unwrap();
                assert_eq!(seen, vec![0, 1]);
                consumers.push(consumer);
            }
            if !early {
                producer.try_publish(Arc::new(2)).expect("room once both have read item 0");
            }
            for consumer in &mut consumers {
                assert_eq!(read(consumer, 1), vec![2]);
            }
            assert_eq!(producer.ring().backlog(), 0);
        });
    }

    #[test]
    fn two_producers_one_consumer_lose_nothing() {
        check(|| {
            let (producer, mut consumers) = Ring::with_consumers(2, 1);
            let writers: Vec<_> = (0..2u32)
                .map(|p| {
                    let mut producer = producer.clone();
                    thread::spawn(move || publish(&mut producer, p))
                })
                .collect();
            let mut seen = read(&mut consumers[0], 2);
            for writer in writers {
                writer.join().unwrap();
            }
            seen.sort_unstable();
            assert_eq!(seen, vec![0, 1]);
        });
    }

    #[test]
    fn the_last_reader_releases_each_item() {
        check(|| {
            let (mut producer, consumers) = Ring::with_consumers(2, 2);
            let item = Arc::new(7u32);
            producer.try_publish(item.clone()).unwrap();
            let readers: Vec<_> = consumers
                .into_iter()
                .map(|mut consumer| thread::spawn(move || read(&mut consumer, 1)))
                .collect();
            for reader in readers {
                assert_eq!(reader.join().unwrap(), vec![7]);
            }
            assert_eq!(Arc::strong_count(&item), 1, "the ring keeps no read item alive");
        });
    }
}
