//! Weighted choice with injected randomness.

use super::model::WeightedBackend;

/// Something with a relative weight.
pub trait Weighted {
    /// The relative weight; 0 = never chosen.
    fn weight(&self) -> u32;
}

impl Weighted for WeightedBackend {
    fn weight(&self) -> u32 {
        self.weight
    }
}

/// Picks an item with probability `weight / total` using `random` (uniform over `u32`).
///
/// The mapping is monotonic: `random` is scaled onto `[0, total)` and the item whose cumulative
/// range holds it wins, so `0` picks the first item with a weight and `u32::MAX` the last.
/// Returns `None` when no item has a weight (the caller answers 500).
pub fn pick_weighted<T: Weighted>(items: &[T], random: u32) -> Option<&T> {
    let total: u64 = items.iter().map(|i| u64::from(i.weight())).sum();
    if total == 0 {
        return None;
    }
    // `random * total / 2^32` is below `total` because `random < 2^32`; it fits in u64
    // because the product is below 2^32 * total.
    let target = ((u128::from(random) * u128::from(total)) >> 32) as u64;
    let mut cumulative = 0u64;
    for item in items {
        cumulative += u64::from(item.weight());
        if target < cumulative {
            return Some(item);
        }
    }
    // Unreachable: target < total and the last cumulative value is total.
    items.iter().rev().find(|i| i.weight() > 0)
}
