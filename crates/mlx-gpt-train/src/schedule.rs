//! The learning-rate schedule of nanoGPT: linear warmup, cosine decay to `min_lr`, then
//! constant — or constant throughout when `decay_lr` is off.

use crate::config::TrainConfig;

/// Learning rate for iteration `it`.
pub fn get_lr(it: usize, c: &TrainConfig) -> f64 {
    if !c.decay_lr {
        return c.learning_rate;
    }
    // 1) linear warmup for warmup_iters steps
    if it < c.warmup_iters {
        return c.learning_rate * (it + 1) as f64 / (c.warmup_iters + 1) as f64;
    }
    // 2) if it > lr_decay_iters, return min learning rate
    if it > c.lr_decay_iters {
        return c.min_lr;
    }
    // 3) in between, cosine decay down to min learning rate
    let ratio = (it - c.warmup_iters) as f64 / (c.lr_decay_iters - c.warmup_iters) as f64;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()); // 1 → 0
    c.min_lr + coeff * (c.learning_rate - c.min_lr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn within_bounds_and_monotone_after_warmup(lr in 1e-5f64..1e-2, frac in 0.0f64..1.0, warmup in 0usize..500,
                                                   span in 1usize..5000, it in 0usize..10000) {
            let c = TrainConfig { learning_rate: lr, min_lr: lr * frac, warmup_iters: warmup,
                                  lr_decay_iters: warmup + span, ..TrainConfig::default() };
            let a = get_lr(it, &c);
            prop_assert!(a > 0.0 && a <= lr * (1.0 + 1e-12));
            if it >= warmup {
                prop_assert!(a >= c.min_lr * (1.0 - 1e-12));
                prop_assert!(get_lr(it + 1, &c) <= a * (1.0 + 1e-12), "not monotone at {}", it);
            } else {
                prop_assert!(get_lr(it + 1, &c) >= a, "warmup not increasing at {}", it);
            }
        }
    }

    #[test]
    fn matches_nanogpt_at_landmarks() {
        let c = TrainConfig {
            learning_rate: 1e-3,
            min_lr: 1e-4,
            warmup_iters: 100,
            lr_decay_iters: 5000,
            ..TrainConfig::default()
        };
        assert!((get_lr(0, &c) - 1e-3 / 101.0).abs() < 1e-15);
        assert!((get_lr(100, &c) - 1e-3).abs() < 1e-15);
        assert!((get_lr(2550, &c) - 5.5e-4).abs() < 1e-12);
        assert_eq!(get_lr(6000, &c), 1e-4);
        let flat = TrainConfig { decay_lr: false, learning_rate: 3e-5, ..TrainConfig::default() };
        assert_eq!(get_lr(7, &flat), 3e-5);
    }
}
