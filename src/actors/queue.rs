//! Batch assembly: bounded per-class queues and the choice of which inputs run together.
//!
//! Pure data structure, no actors and no time source of its own, so that its invariants are unit- and
//! property-tested: a batch never exceeds its token budget or size (unless one input alone does), realtime is
//! always taken first, every queued item leaves exactly once (in a batch or as expired), and inputs of similar
//! length are grouped so that padding stays low.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::protocol::Priority;

/// What the queue needs to know about an item.
pub(crate) trait Queued {
    /// Tokens of this input (after truncation).
    fn tokens(&self) -> usize;
    /// False when the item should not be computed any more: its caller is gone, its request failed, or its
    /// deadline falls before `horizon` (when a batch picked now would end).
    fn is_live(&self, horizon: Instant) -> bool;
    /// When its request was received.
    fn received(&self) -> Instant;
}

/// The limits of one batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Budget {
    /// Most padded tokens: inputs × longest.
    pub max_tokens: usize,
    /// Most inputs.
    pub max_size: usize,
    /// Pick inputs of similar length (true) or strictly oldest first (false).
    pub group_by_length: bool,
    /// With grouping: most padded tokens per real token a batch may reach by taking one more input.
    pub max_padding_ratio: f64,
}

/// A batch taken from the queues.
#[derive(Debug)]
pub(crate) struct Picked<T> {
    pub class: Priority,
    pub items: Vec<T>,
    /// Items found dead while picking; the caller answers them.
    pub expired: Vec<T>,
    /// inputs × longest.
    pub padded_tokens: usize,
    /// Sum of the inputs' tokens.
    pub real_tokens: usize,
}

/// One bounded FIFO per priority class.
#[derive(Debug)]
pub(crate) struct Queues<T> {
    classes: [VecDeque<T>; 3],
    capacity: [usize; 3],
}

/// How far past the oldest item the picker looks for inputs of similar length, in multiples of the batch size.
const WINDOW_FACTOR: usize = 4;

// === impl Queues ===

impl<T: Queued> Queues<T> {
    pub fn new(capacity: [usize; 3]) -> Queues<T> {
        Queues {
            classes: Default::default(),
            capacity,
        }
    }

    /// Queued items of a class.
    pub fn len(&self, class: Priority) -> usize {
        self.classes[class.index()].len()
    }

    /// Queued items of every class.
    pub fn total_len(&self) -> usize {
        self.classes.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.iter().all(VecDeque::is_empty)
    }

    /// Queues all of a request's items, or none of them when they do not fit.
    pub fn push(&mut self, class: Priority, items: Vec<T>) -> Result<(), Vec<T>> {
        let queue = &mut self.classes[class.index()];
        if queue.len() + items.len() > self.capacity[class.index()] {
            return Err(items);
        }
        queue.extend(items);
        Ok(())
    }

    /// When the oldest queued item's request was received.
    pub fn oldest_received(&self) -> Option<Instant> {
        self.classes.iter().filter_map(|q| q.front().map(Queued::received)).min()
    }

    /// Takes every item of one class out.
    pub fn drain_class(&mut self, class: Priority) -> Vec<T> {
        self.classes[class.index()].drain(..).collect()
    }

    /// Takes every item out (used at shutdown and when no device is left).
    pub fn drain(&mut self) -> Vec<T> {
        self.classes.iter_mut().flat_map(|q| q.drain(..)).collect()
    }

    /// Takes the next batch: from the highest class that has live items, anchored on its oldest item and filled
    /// with the items nearest to it in length, within `budget(class)`. A class whose budget is `None` is paused.
    pub fn pick(&mut self, horizon: Instant, budget: impl Fn(Priority) -> Option<Budget>) -> Option<Picked<T>> {
        let mut expired = Vec::new();
        for class in Priority::ALL {
            let Some(class_budget) = budget(class) else { continue };
            let queue = &mut self.classes[class.index()];
            while queue.front().is_some_and(|item| !item.is_live(horizon)) {
                expired.extend(queue.pop_front());
            }
            if queue.is_empty() {
                continue;
            }
            let mut picked = pick_from(queue, class_budget, horizon);
            picked.expired.append(&mut expired);
            picked.class = class;
            return Some(picked);
        }
        (!expired.is_empty()).then(|| Picked {
            class: Priority::Bulk,
            items: Vec::new(),
            expired,
            padded_tokens: 0,
            real_tokens: 0,
        })
    }
}

fn pick_from<T: Queued>(queue: &mut VecDeque<T>, budget: Budget, horizon: Instant) -> Picked<T> {
    let factor = if budget.group_by_length { WINDOW_FACTOR } else { 1 };
    let window = queue.len().min(budget.max_size.max(1) * factor);
    let anchor_tokens = queue[0].tokens();
    // Candidates by closeness in length to the oldest item, older first among equals (or plain age order).
    let mut order: Vec<usize> = (1..window).collect();
    if budget.group_by_length {
        order.sort_by_key(|&i| (queue[i].tokens().abs_diff(anchor_tokens), i));
    }
    let mut chosen = vec![0usize];
    let mut dead = Vec::new();
    let mut longest = anchor_tokens;
    let mut real = anchor_tokens;
    for i in order {
        if chosen.len() >= budget.max_size {
            break;
        }
        if !queue[i].is_live(horizon) {
            dead.push(i);
            continue;
        }
        let tokens = queue[i].tokens();
        let new_longest = longest.max(tokens);
        let padded = (chosen.len() + 1) * new_longest;
        if padded > budget.max_tokens {
            continue;
        }
        if budget.group_by_length && padded as f64 > budget.max_padding_ratio * (real + tokens) as f64 {
            continue;
        }
        chosen.push(i);
        longest = new_longest;
        real += tokens;
    }
    let mut take: Vec<(usize, bool)> = chosen.iter().map(|&i| (i, true)).chain(dead.iter().map(|&i| (i, false))).collect();
    take.sort_unstable_by_key(|&(index, _)| std::cmp::Reverse(index));
    let mut items = Vec::with_capacity(chosen.len());
    let mut expired = Vec::with_capacity(dead.len());
    for (index, keep) in take {
        let item = queue.remove(index).expect("index is inside the window");
        if keep {
            items.push(item);
        } else {
            expired.push(item);
        }
    }
    items.reverse();
    let real_tokens = items.iter().map(Queued::tokens).sum();
    Picked {
        class: Priority::Normal,
        padded_tokens: items.len() * longest,
        real_tokens,
        items,
        expired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Item {
        id: usize,
        tokens: usize,
        live: bool,
    }

    impl Queued for Item {
        fn tokens(&self) -> usize {
            self.tokens
        }
        fn is_live(&self, _horizon: Instant) -> bool {
            self.live
        }
        fn received(&self) -> Instant {
            Instant::now()
        }
    }

    fn item(id: usize, tokens: usize) -> Item {
        Item { id, tokens, live: true }
    }

    fn budget(max_tokens: usize, max_size: usize) -> impl Fn(Priority) -> Option<Budget> {
        move |_| {
            Some(Budget {
                max_tokens,
                max_size,
                group_by_length: true,
                max_padding_ratio: 100.0,
            })
        }
    }

    #[test]
    fn realtime_goes_first() {
        let mut queues = Queues::new([10, 10, 10]);
        queues.push(Priority::Bulk, vec![item(1, 5)]).unwrap();
        queues.push(Priority::Normal, vec![item(2, 5)]).unwrap();
        queues.push(Priority::Realtime, vec![item(3, 5)]).unwrap();
        let order: Vec<usize> = std::iter::from_fn(|| queues.pick(Instant::now(), budget(5, 1)))
            .map(|p| p.items[0].id)
            .collect();
        assert_eq!(order, vec![3, 2, 1]);
    }

    #[test]
    fn full_class_refuses_the_whole_request() {
        let mut queues = Queues::new([2, 2, 2]);
        queues.push(Priority::Normal, vec![item(1, 1)]).unwrap();
        let refused = queues.push(Priority::Normal, vec![item(2, 1), item(3, 1)]).unwrap_err();
        assert_eq!(refused.len(), 2);
        assert_eq!(queues.len(Priority::Normal), 1);
        queues.push(Priority::Bulk, vec![item(4, 1), item(5, 1)]).unwrap();
    }

    #[test]
    fn similar_lengths_are_grouped() {
        let mut queues = Queues::new([100, 100, 100]);
        let lengths = [10, 200, 12, 190, 11, 205, 9, 198];
        queues
            .push(Priority::Normal, lengths.iter().enumerate().map(|(i, &t)| item(i, t)).collect())
            .unwrap();
        let first = queues.pick(Instant::now(), budget(4 * 12, 8)).unwrap();
        let mut ids: Vec<usize> = first.items.iter().map(|i| i.id).collect();
        ids.sort();
        assert_eq!(ids, vec![0, 2, 4, 6], "the four short ones run together");
        assert_eq!(first.padded_tokens, 48);
        assert_eq!(first.real_tokens, 42);
    }

    #[test]
    fn padding_is_capped_even_when_the_budget_allows_more() {
        let mut queues = Queues::new([100, 100, 100]);
        let lengths = [10, 200, 12, 190, 11];
        queues
            .push(Priority::Normal, lengths.iter().enumerate().map(|(i, &t)| item(i, t)).collect())
            .unwrap();
        let capped = |_| {
            Some(Budget {
                max_tokens: 10_000,
                max_size: 64,
                group_by_length: true,
                max_padding_ratio: 1.5,
            })
        };
        let first = queues.pick(Instant::now(), capped).unwrap();
        assert_eq!(first.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![0, 2, 4]);
        let second = queues.pick(Instant::now(), capped).unwrap();
        assert_eq!(second.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn fifo_mode_takes_the_oldest() {
        let mut queues = Queues::new([100, 100, 100]);
        let lengths = [10, 200, 12, 190];
        queues
            .push(Priority::Normal, lengths.iter().enumerate().map(|(i, &t)| item(i, t)).collect())
            .unwrap();
        let fifo = |_| {
            Some(Budget {
                max_tokens: 10_000,
                max_size: 2,
                group_by_length: false,
                max_padding_ratio: 100.0,
            })
        };
        let first = queues.pick(Instant::now(), fifo).unwrap();
        assert_eq!(first.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(first.padded_tokens, 400);
    }

    #[test]
    fn an_input_over_budget_still_runs_alone() {
        let mut queues = Queues::new([10, 10, 10]);
        queues.push(Priority::Normal, vec![item(1, 300), item(2, 300)]).unwrap();
        let picked = queues.pick(Instant::now(), budget(100, 8)).unwrap();
        assert_eq!(picked.items.len(), 1);
    }

    #[test]
    fn dead_items_are_returned_not_run() {
        let mut queues = Queues::new([10, 10, 10]);
        queues
            .push(
                Priority::Normal,
                vec![
                    Item {
                        id: 1,
                        tokens: 5,
                        live: false,
                    },
                    item(2, 5),
                    Item {
                        id: 3,
                        tokens: 5,
                        live: false,
                    },
                ],
            )
            .unwrap();
        let picked = queues.pick(Instant::now(), budget(100, 8)).unwrap();
        assert_eq!(picked.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![2]);
        let mut expired: Vec<usize> = picked.expired.iter().map(|i| i.id).collect();
        expired.sort();
        assert_eq!(expired, vec![1, 3]);
        assert!(queues.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn batches_respect_budget_and_every_item_leaves_once(
            lengths in proptest::collection::vec((1usize..300, 0usize..3, proptest::bool::weighted(0.9)), 1..200),
            max_tokens in 1usize..2000,
            max_size in 1usize..64,
        ) {
            let mut queues = Queues::new([1000, 1000, 1000]);
            for (id, &(tokens, class, live)) in lengths.iter().enumerate() {
                queues.push(Priority::ALL[class], vec![Item { id, tokens, live }]).unwrap();
            }
            let mut seen = vec![0u32; lengths.len()];
            let mut last_class = Priority::Realtime;
            while let Some(picked) = queues.pick(Instant::now(), budget(max_tokens, max_size)) {
                if !picked.items.is_empty() {
                    proptest::prop_assert!(picked.class >= last_class, "a lower class ran while a higher one waited");
                    last_class = picked.class;
                    proptest::prop_assert!(picked.items.len() <= max_size);
                    let longest = picked.items.iter().map(|i| i.tokens).max().unwrap();
                    proptest::prop_assert_eq!(picked.padded_tokens, picked.items.len() * longest);
                    proptest::prop_assert!(picked.items.len() == 1 || picked.padded_tokens <= max_tokens);
                    proptest::prop_assert!(picked.items.iter().all(|i| i.live));
                }
                for item in picked.items.iter().chain(&picked.expired) {
                    seen[item.id] += 1;
                }
            }
            proptest::prop_assert!(seen.iter().all(|&n| n == 1), "every item leaves exactly once");
        }
    }
}

#[cfg(test)]
mod pause_tests {
    use super::*;

    #[derive(Debug)]
    struct Item(usize);

    impl Queued for Item {
        fn tokens(&self) -> usize {
            self.0
        }
        fn is_live(&self, _horizon: Instant) -> bool {
            true
        }
        fn received(&self) -> Instant {
            Instant::now()
        }
    }

    #[test]
    fn a_paused_class_is_skipped() {
        let mut queues = Queues::new([10, 10, 10]);
        queues.push(Priority::Bulk, vec![Item(3)]).unwrap();
        let budget = Budget {
            max_tokens: 100,
            max_size: 8,
            group_by_length: true,
            max_padding_ratio: 2.0,
        };
        assert!(queues
            .pick(Instant::now(), |class| (class != Priority::Bulk).then_some(budget))
            .is_none());
        assert_eq!(queues.pick(Instant::now(), |_| Some(budget)).unwrap().items.len(), 1);
    }
}
