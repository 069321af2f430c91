//! Answers to each connection's publishes in the order it published them, as plain data. With
//! several Redis servers (or a Redis Cluster) a connection's channels live on different
//! servers, which answer in their own time, while a client matches each acknowledgement to its
//! oldest publish not yet answered (as the Rust and JS clients do, and as a Redis client matches
//! replies). An answer that comes early waits for the ones before it; a refusal is an answer
//! like any other, so it never overtakes an acknowledgement either.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::history::disk::{PublishOutcome, ReplyTo};

#[derive(Default)]
pub(super) struct AnswerOrder {
    next_seq: u64,
    /// Per connection that published lately: each publish not yet answered, its number and
    /// answer. A queue that empties stays until `tidy` (a publishing connection's next publish
    /// would make it again: one allocation per publish, before).
    waiting: FxHashMap<ReplyTo, VecDeque<(u64, Answered)>>,
}

/// Where a publish's answer stands.
enum Answered {
    /// Not yet.
    Pending,
    /// This, to send once the publishes before it are answered.
    With(PublishOutcome),
    /// It needs none (an unacknowledged publish that went through).
    Quietly,
}

impl AnswerOrder {
    /// Numbers a publish of `target`'s.
    pub fn enter(&mut self, target: ReplyTo) -> u64 {
        self.next_seq += 1;
        self.waiting.entry(target).or_default().push_back((self.next_seq, Answered::Pending));
        self.next_seq
    }

    /// Publish `seq` of `target` is answered (`None`: it needs no answer); hands `due` the
    /// answers now due, in order.
    pub fn settle(
        &mut self,
        target: ReplyTo,
        seq: u64,
        answer: Option<PublishOutcome>,
        mut due: impl FnMut(PublishOutcome),
    ) {
        let Some(queue) = self.waiting.get_mut(&target) else {
            answer.into_iter().for_each(due);
            return;
        };
        // Answers mostly come in order: the front is the one.
        if let Some(slot) = queue.iter_mut().find(|(s, _)| *s == seq) {
            slot.1 = answer.map_or(Answered::Quietly, Answered::With);
        }
        while queue.front().is_some_and(|(_, answered)| !matches!(answered, Answered::Pending)) {
            if let Some((_, Answered::With(answer))) = queue.pop_front() {
                due(answer);
            }
        }
    }

    /// Lets go of the queues of connections with nothing waiting (now and then).
    pub fn tidy(&mut self) {
        self.waiting.retain(|_, queue| !queue.is_empty());
        self.waiting.shrink_to_fit();
    }

    /// Publishes not yet answered.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn answers_go_back_in_each_connections_publish_order() {
        let target = |key| ReplyTo { worker: 0, key, serial: 1 };
        let answer = |key, offset| PublishOutcome {
            target: target(key),
            channel: Bytes::from_static(b"c"),
            offset,
            result: Ok(()),
            asked_ns: 0,
        };
        let mut order = AnswerOrder::default();
        let (a1, a2, a3) = (order.enter(target(1)), order.enter(target(1)), order.enter(target(1)));
        let b1 = order.enter(target(2));
        let settle = |order: &mut AnswerOrder, key, seq, answer| {
            let mut due = Vec::new();
            order.settle(target(key), seq, answer, |outcome| due.push(outcome.offset));
            due
        };
        // Another connection is not held up by this one's.
        assert_eq!(settle(&mut order, 2, b1, Some(answer(2, 9))), [9]);
        assert!(settle(&mut order, 1, a3, Some(answer(1, 3))).is_empty(), "waits for a1, a2");
        assert!(settle(&mut order, 1, a2, None).is_empty(), "a quiet one still waits for a1");
        assert_eq!(settle(&mut order, 1, a1, Some(answer(1, 1))), [1, 3]);
        assert_eq!(order.held(), 0, "nothing left held");
        order.tidy();
        assert!(order.waiting.is_empty(), "idle connections let go of");
    }

    /// Seeded schedules: three connections publish to channels on four servers, each server
    /// answers its publishes in the order it got them but at its own pace, some publishes need
    /// no answer (fire-and-forget), some are refused; every connection must get its answers in
    /// its publish order, each once, and nothing stays held.
    #[test]
    fn answers_keep_publish_order_under_seeded_schedules() {
        for seed in crate::cluster::sim_support::seeds() {
            let mut rng = crate::cluster::sim_support::Rng::new(seed);
            let mut next = move |n: u64| rng.below(n);
            let target = |key| ReplyTo { worker: key % 2, key, serial: 1 };
            let mut order = AnswerOrder::default();
            // Per server, its publishes in the order sent: (connection, seq, the publish's
            // number on its connection, acknowledged).
            let mut servers: Vec<VecDeque<(usize, u64, u64, bool)>> = vec![VecDeque::new(); 4];
            let mut published = [0u64; 3];
            let mut received: Vec<Vec<u64>> = vec![Vec::new(); 3];
            let mut quiet: Vec<Vec<u64>> = vec![Vec::new(); 3];
            for _ in 0..400 {
                if next(3) == 0 {
                    let key = next(3) as usize;
                    published[key] += 1;
                    let seq = order.enter(target(key));
                    let acked = next(4) != 0;
                    if !acked {
                        quiet[key].push(published[key]);
                    }
                    servers[next(4) as usize].push_back((key, seq, published[key], acked));
                } else if let Some((key, seq, n, acked)) = servers[next(4) as usize].pop_front() {
                    let answer = acked.then(|| PublishOutcome {
                        target: target(key),
                        channel: Bytes::from_static(b"c"),
                        offset: n,
                        result: if next(10) == 0 {
                            Err((crate::protocol::ErrorCode::Unavailable, "refused".into()))
                        } else {
                            Ok(())
                        },
                        asked_ns: 0,
                    });
                    order.settle(target(key), seq, answer, |due| {
                        assert_eq!(due.target, target(key), "seed {seed}: answer to another");
                        received[key].push(due.offset);
                    });
                }
            }
            // Every server answers what it still has, in its own order.
            for server in &mut servers {
                while let Some((key, seq, n, acked)) = server.pop_front() {
                    let answer = acked.then(|| PublishOutcome {
                        target: target(key),
                        channel: Bytes::from_static(b"c"),
                        offset: n,
                        result: Ok(()),
                        asked_ns: 0,
                    });
                    order.settle(target(key), seq, answer, |due| received[key].push(due.offset));
                }
            }
            for key in 0..3 {
                let expected: Vec<u64> =
                    (1..=published[key]).filter(|n| !quiet[key].contains(n)).collect();
                assert_eq!(received[key], expected, "seed {seed}: connection {key}'s answers");
            }
            assert_eq!(order.held(), 0, "seed {seed}: answers left held");
        }
    }
}
