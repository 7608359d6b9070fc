//! Weighted choice with injected randomness: bounds, zero weights, proportions.

use super::*;

struct W(u32);

impl Weighted for W {
    fn weight(&self) -> u32 {
        self.0
    }
}

fn index(items: &[W], random: u32) -> Option<usize> {
    pick_weighted(items, random).map(|chosen| {
        items
            .iter()
            .position(|i| std::ptr::eq(i, chosen))
            .unwrap_or(usize::MAX)
    })
}

#[test]
fn bounds_pick_the_first_and_last_weighted_items() {
    let cases: Vec<(Vec<u32>, Option<usize>, Option<usize>)> = vec![
        (vec![], None, None),
        (vec![0], None, None),
        (vec![0, 0], None, None),
        (vec![1], Some(0), Some(0)),
        (vec![0, 1], Some(1), Some(1)),
        (vec![50, 50], Some(0), Some(1)),
        (vec![0, 3, 0, 7, 0], Some(1), Some(3)),
        (vec![u32::MAX, u32::MAX, u32::MAX], Some(0), Some(2)),
    ];
    for (weights, at_zero, at_max) in cases {
        let items: Vec<W> = weights.iter().copied().map(W).collect();
        assert_eq!(index(&items, 0), at_zero, "{weights:?} at 0");
        assert_eq!(index(&items, u32::MAX), at_max, "{weights:?} at max");
    }
}

#[test]
fn boundaries_between_items_are_exact() {
    // Weights 1:3 split the u32 range at 2^30.
    let items = [W(1), W(3)];
    assert_eq!(index(&items, (1 << 30) - 1), Some(0));
    assert_eq!(index(&items, 1 << 30), Some(1));
    // 25/75 in percent, as a VirtualService writes it.
    let items = [W(25), W(75)];
    assert_eq!(index(&items, (1 << 30) - 1), Some(0));
    assert_eq!(index(&items, 1 << 30), Some(1));
}

#[test]
fn proportions_follow_weights_and_zero_weights_are_never_chosen() {
    let items = [W(10), W(0), W(30), W(60)];
    let mut counts = [0u32; 4];
    // An evenly spaced sweep over the whole u32 range stands in for uniform randomness.
    let samples = 1u32 << 16;
    for i in 0..samples {
        let random = i << 16;
        if let Some(chosen) = index(&items, random) {
            counts[chosen] += 1;
        }
    }
    assert_eq!(counts[1], 0);
    for (count, weight) in counts.iter().zip([10, 0, 30, 60]) {
        let expected = f64::from(samples) * f64::from(weight) / 100.0;
        assert!((f64::from(*count) - expected).abs() <= 1.0, "{counts:?}");
    }
}

#[test]
fn weighted_backends_use_their_weight() {
    let backend = |subset: &str, weight| WeightedBackend {
        backend: Backend::new(REVIEWS, None, Some(subset.to_owned())),
        weight,
        request_headers: Default::default(),
        response_headers: Default::default(),
    };
    let backends = [backend("v1", 90), backend("v2", 10)];
    let subset = |random| pick_weighted(&backends, random).and_then(|b| b.backend.subset.clone());
    assert_eq!(subset(0).as_deref(), Some("v1"));
    assert_eq!(subset(u32::MAX).as_deref(), Some("v2"));
}
