//! Batch assembly: bounded queues per priority class and model, and the choice of which inputs run together.
//!
//! Pure data structure, no actors and no time source of its own, so that its invariants are unit- and
//! property-tested: a batch never exceeds its token budget or size (unless one input alone does) and holds one
//! model, realtime work of any model is always taken before normal and bulk work of any model, every queued item
//! leaves exactly once (in a batch or as expired), and inputs of similar length are grouped so that padding stays
//! low.
//!
//! Within a class, models share the devices fairly by device time: each model's queue is charged what its batches
//! cost (the batcher charges the predicted run time in microseconds), and the next batch is taken from the model
//! charged least. A model whose queue was empty keeps at most [`JOIN_CREDIT`] of what it is owed: its clients
//! waiting for the batch that emptied its queue lose nothing, and a model idle for long gets a bounded burst
//! rather than the device for as long as it was away.

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
    /// The model it is for (its index).
    fn model(&self) -> usize;
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
    pub model: usize,
    pub items: Vec<T>,
    /// Items found dead while picking; the caller answers them.
    pub expired: Vec<T>,
    /// inputs × longest.
    pub padded_tokens: usize,
    /// Sum of the inputs' tokens.
    pub real_tokens: usize,
}

/// Per priority class, one bounded FIFO per model.
#[derive(Debug)]
pub(crate) struct Queues<T> {
    classes: [ClassQueues<T>; 3],
    /// Per class, the most items queued per model.
    capacity: [usize; 3],
}

/// The queues of one class.
#[derive(Debug)]
struct ClassQueues<T> {
    /// By model index (grown on first use).
    models: Vec<VecDeque<T>>,
    /// Device time charged to each model's batches of this class (any unit, the same for all).
    charged: Vec<f64>,
}

/// The most device time (µs, the batcher's unit of charge) a model whose queue was empty may be behind the least
/// charged queued model when it queues again: 100 ms.
pub(crate) const JOIN_CREDIT: f64 = 100_000.0;

/// How far past the oldest item the picker looks for inputs of similar length, in multiples of the batch size.
const WINDOW_FACTOR: usize = 4;

// === impl Queues ===

impl<T> Default for ClassQueues<T> {
    fn default() -> Self {
        ClassQueues {
            models: Vec::new(),
            charged: Vec::new(),
        }
    }
}

impl<T: Queued> ClassQueues<T> {
    fn len(&self) -> usize {
        self.models.iter().map(VecDeque::len).sum()
    }

    /// The queue of `model`, created empty if it is new.
    fn queue_mut(&mut self, model: usize) -> &mut VecDeque<T> {
        if self.models.len() <= model {
            self.models.resize_with(model + 1, VecDeque::new);
            self.charged.resize(model + 1, 0.0);
        }
        &mut self.models[model]
    }

    /// Models with queued items, least charged first (lower index first among equals).
    fn by_charge(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.models.len()).filter(|&m| !self.models[m].is_empty()).collect();
        order.sort_by(|&a, &b| self.charged[a].total_cmp(&self.charged[b]).then(a.cmp(&b)));
        order
    }
}

impl<T: Queued> Queues<T> {
    /// `capacity`: per class (realtime, normal, bulk), the most inputs queued for each model.
    pub fn new(capacity: [usize; 3]) -> Queues<T> {
        Queues {
            classes: Default::default(),
            capacity,
        }
    }

    /// The most items a class queues for one model.
    pub fn capacity(&self, class: Priority) -> usize {
        self.capacity[class.index()]
    }

    /// Queued items of a class, all models.
    pub fn len(&self, class: Priority) -> usize {
        self.classes[class.index()].len()
    }

    /// Queued items of a class for one model.
    pub fn model_len(&self, class: Priority, model: usize) -> usize {
        self.classes[class.index()].models.get(model).map_or(0, VecDeque::len)
    }

    /// Queued items of every class.
    pub fn total_len(&self) -> usize {
        self.classes.iter().map(ClassQueues::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.iter().all(|c| c.models.iter().all(VecDeque::is_empty))
    }

    /// Queues all of a request's items (one model's), or none of them when they do not fit.
    pub fn push(&mut self, class: Priority, items: Vec<T>) -> Result<(), Vec<T>> {
        let Some(model) = items.first().map(Queued::model) else {
            return Ok(());
        };
        let capacity = self.capacity[class.index()];
        let queues = &mut self.classes[class.index()];
        // A model that had nothing queued joins at most JOIN_CREDIT behind the least charged of those queued.
        let floor = queues.by_charge().first().map(|&m| queues.charged[m] - JOIN_CREDIT);
        let queue = queues.queue_mut(model);
        if queue.len() + items.len() > capacity {
            return Err(items);
        }
        let was_empty = queue.is_empty();
        queue.extend(items);
        if let Some(floor) = floor.filter(|_| was_empty) {
            queues.charged[model] = queues.charged[model].max(floor);
        }
        Ok(())
    }

    /// Charges `model` the cost of a batch of `class` it was given.
    pub fn charge(&mut self, class: Priority, model: usize, cost: f64) {
        let queues = &mut self.classes[class.index()];
        queues.queue_mut(model);
        queues.charged[model] += cost;
    }

    /// When the oldest queued item's request was received.
    pub fn oldest_received(&self) -> Option<Instant> {
        self.classes
            .iter()
            .flat_map(|c| c.models.iter())
            .filter_map(|q| q.front().map(Queued::received))
            .min()
    }

    /// Takes every item of one class out.
    pub fn drain_class(&mut self, class: Priority) -> Vec<T> {
        self.classes[class.index()].models.iter_mut().flat_map(|q| q.drain(..)).collect()
    }

    /// Takes every item out (used at shutdown and when no device is left).
    pub fn drain(&mut self) -> Vec<T> {
        Priority::ALL.iter().flat_map(|&class| self.drain_class(class)).collect()
    }

    /// Takes the next batch for a device that holds the models `holds` accepts: from the highest class that has
    /// live items of such a model, from the least charged of those models, anchored on its oldest item and
    /// filled with the items nearest to it in length, within `budget(class, model)`. A budget of `None` pauses
    /// that class (for that model).
    pub fn pick(
        &mut self,
        horizon: Instant,
        budget: impl Fn(Priority, usize) -> Option<Budget>,
        holds: impl Fn(usize) -> bool,
    ) -> Option<Picked<T>> {
        let mut expired = Vec::new();
        for class in Priority::ALL {
            let queues = &mut self.classes[class.index()];
            for model in queues.by_charge() {
                if !holds(model) {
                    continue;
                }
                let Some(model_budget) = budget(class, model) else { continue };
                let queue = &mut queues.models[model];
                while queue.front().is_some_and(|item| !item.is_live(horizon)) {
                    expired.extend(queue.pop_front());
                }
                if queue.is_empty() {
                    continue;
                }
                let mut picked = pick_from(queue, model_budget, horizon);
                picked.expired.append(&mut expired);
                picked.class = class;
                picked.model = model;
                return Some(picked);
            }
        }
        (!expired.is_empty()).then(|| Picked {
            class: Priority::Bulk,
            model: 0,
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
        model: 0,
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
        model: usize,
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
        fn model(&self) -> usize {
            self.model
        }
    }

    fn item(id: usize, tokens: usize) -> Item {
        Item {
            id,
            tokens,
            live: true,
            model: 0,
        }
    }

    fn all(_: usize) -> bool {
        true
    }

    fn budget(max_tokens: usize, max_size: usize) -> impl Fn(Priority, usize) -> Option<Budget> {
        move |_, _| {
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
        let order: Vec<usize> = std::iter::from_fn(|| queues.pick(Instant::now(), budget(5, 1), all))
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
        let first = queues.pick(Instant::now(), budget(4 * 12, 8), all).unwrap();
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
        let capped = |_, _| {
            Some(Budget {
                max_tokens: 10_000,
                max_size: 64,
                group_by_length: true,
                max_padding_ratio: 1.5,
            })
        };
        let first = queues.pick(Instant::now(), capped, all).unwrap();
        assert_eq!(first.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![0, 2, 4]);
        let second = queues.pick(Instant::now(), capped, all).unwrap();
        assert_eq!(second.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn fifo_mode_takes_the_oldest() {
        let mut queues = Queues::new([100, 100, 100]);
        let lengths = [10, 200, 12, 190];
        queues
            .push(Priority::Normal, lengths.iter().enumerate().map(|(i, &t)| item(i, t)).collect())
            .unwrap();
        let fifo = |_, _| {
            Some(Budget {
                max_tokens: 10_000,
                max_size: 2,
                group_by_length: false,
                max_padding_ratio: 100.0,
            })
        };
        let first = queues.pick(Instant::now(), fifo, all).unwrap();
        assert_eq!(first.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(first.padded_tokens, 400);
    }

    #[test]
    fn an_input_over_budget_still_runs_alone() {
        let mut queues = Queues::new([10, 10, 10]);
        queues.push(Priority::Normal, vec![item(1, 300), item(2, 300)]).unwrap();
        let picked = queues.pick(Instant::now(), budget(100, 8), all).unwrap();
        assert_eq!(picked.items.len(), 1);
    }

    #[test]
    fn dead_items_are_returned_not_run() {
        let mut queues = Queues::new([10, 10, 10]);
        queues
            .push(
                Priority::Normal,
                vec![Item { live: false, ..item(1, 5) }, item(2, 5), Item { live: false, ..item(3, 5) }],
            )
            .unwrap();
        let picked = queues.pick(Instant::now(), budget(100, 8), all).unwrap();
        assert_eq!(picked.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![2]);
        let mut expired: Vec<usize> = picked.expired.iter().map(|i| i.id).collect();
        expired.sort();
        assert_eq!(expired, vec![1, 3]);
        assert!(queues.is_empty());
    }

    fn of_model(id: usize, tokens: usize, model: usize) -> Item {
        Item { model, ..item(id, tokens) }
    }

    #[test]
    fn realtime_of_any_model_goes_before_bulk_of_any() {
        let mut queues = Queues::new([10, 10, 10]);
        queues.push(Priority::Bulk, vec![of_model(1, 5, 0)]).unwrap();
        queues.push(Priority::Normal, vec![of_model(2, 5, 1)]).unwrap();
        queues.push(Priority::Realtime, vec![of_model(3, 5, 1)]).unwrap();
        queues.push(Priority::Realtime, vec![of_model(4, 5, 0)]).unwrap();
        let order: Vec<(usize, usize)> = std::iter::from_fn(|| queues.pick(Instant::now(), budget(5, 1), all))
            .map(|p| (p.items[0].id, p.model))
            .collect();
        assert_eq!(order, vec![(4, 0), (3, 1), (2, 1), (1, 0)]);
    }

    #[test]
    fn models_share_a_class_by_the_cost_charged() {
        // Model 1's batches cost three times model 0's: model 0 gets three batches for each of model 1's.
        let mut queues = Queues::new([100, 100, 100]);
        queues.push(Priority::Bulk, (0..40).map(|i| of_model(i, 5, 1)).collect()).unwrap();
        queues.push(Priority::Bulk, (40..80).map(|i| of_model(i, 5, 0)).collect()).unwrap();
        let mut runs = [0usize; 2];
        for _ in 0..40 {
            let picked = queues.pick(Instant::now(), budget(5, 1), all).unwrap();
            runs[picked.model] += 1;
            queues.charge(picked.class, picked.model, if picked.model == 1 { 3.0 } else { 1.0 });
        }
        assert_eq!(runs, [30, 10]);
    }

    #[test]
    fn a_model_that_was_idle_gets_a_bounded_burst_then_its_share() {
        let batch = JOIN_CREDIT / 2.0;
        let mut queues = Queues::new([100, 100, 100]);
        queues.push(Priority::Normal, (0..50).map(|i| of_model(i, 5, 0)).collect()).unwrap();
        for _ in 0..20 {
            let picked = queues.pick(Instant::now(), budget(5, 1), all).unwrap();
            queues.charge(picked.class, picked.model, batch);
        }
        // Model 1 arrives after model 0 ran 20 batches: it runs ahead by at most JOIN_CREDIT, then they alternate.
        queues
            .push(Priority::Normal, (100..120).map(|i| of_model(i, 5, 1)).collect())
            .unwrap();
        let mut order = Vec::new();
        for _ in 0..10 {
            let picked = queues.pick(Instant::now(), budget(5, 1), all).unwrap();
            order.push(picked.model);
            queues.charge(picked.class, picked.model, batch);
        }
        assert_eq!(order, [1, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn a_model_that_empties_its_queue_keeps_what_it_is_owed() {
        // Closed-loop clients: model 0's queue empties at every batch and refills while model 1's batch runs. Its
        // batches cost a third of model 1's, so it is owed three batches per batch of model 1.
        let mut queues = Queues::new([100, 100, 100]);
        queues.push(Priority::Bulk, (0..100).map(|i| of_model(i, 5, 1)).collect()).unwrap();
        let mut runs = [0usize; 2];
        let mut id = 1000;
        for _ in 0..80 {
            if queues.model_len(Priority::Bulk, 0) == 0 {
                queues.push(Priority::Bulk, vec![of_model(id, 5, 0)]).unwrap();
                id += 1;
            }
            let picked = queues.pick(Instant::now(), budget(5, 1), all).unwrap();
            runs[picked.model] += 1;
            let cost = if picked.model == 1 { 30_000.0 } else { 10_000.0 };
            queues.charge(picked.class, picked.model, cost);
        }
        assert!((59..=61).contains(&runs[0]), "{runs:?}");
    }

    #[test]
    fn a_device_gets_only_the_models_it_holds_and_capacity_is_per_model() {
        let mut queues = Queues::new([10, 2, 10]);
        queues.push(Priority::Normal, vec![of_model(1, 5, 0), of_model(2, 5, 0)]).unwrap();
        assert!(
            queues.push(Priority::Normal, vec![of_model(3, 5, 0)]).is_err(),
            "model 0's queue is full"
        );
        queues.push(Priority::Normal, vec![of_model(4, 5, 1)]).unwrap();
        let picked = queues.pick(Instant::now(), budget(100, 8), |m| m == 1).unwrap();
        assert_eq!((picked.model, picked.items.len()), (1, 1));
        assert!(queues.pick(Instant::now(), budget(100, 8), |m| m == 1).is_none());
        assert_eq!(queues.model_len(Priority::Normal, 0), 2);
    }

    proptest::proptest! {
        #[test]
        fn batches_respect_budget_and_every_item_leaves_once(
            lengths in proptest::collection::vec((1usize..300, 0usize..3, proptest::bool::weighted(0.9), 0usize..3), 1..200),
            max_tokens in 1usize..2000,
            max_size in 1usize..64,
        ) {
            let mut queues = Queues::new([1000, 1000, 1000]);
            for (id, &(tokens, class, live, model)) in lengths.iter().enumerate() {
                queues.push(Priority::ALL[class], vec![Item { id, tokens, live, model }]).unwrap();
            }
            let mut seen = vec![0u32; lengths.len()];
            let mut last_class = Priority::Realtime;
            while let Some(picked) = queues.pick(Instant::now(), budget(max_tokens, max_size), all) {
                if !picked.items.is_empty() {
                    proptest::prop_assert!(picked.items.iter().all(|i| i.model == picked.model), "a batch mixed models");
                    queues.charge(picked.class, picked.model, picked.padded_tokens as f64);
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
        fn model(&self) -> usize {
            0
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
            .pick(Instant::now(), |class, _| (class != Priority::Bulk).then_some(budget), |_| true)
            .is_none());
        assert_eq!(queues.pick(Instant::now(), |_, _| Some(budget), |_| true).unwrap().items.len(), 1);
    }
}
