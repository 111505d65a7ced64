//! A process-wide on/off switch for an optimisation, defaulting to on unless its
//! environment variable says `0` or `off`. Each optimisation that can be turned off for
//! comparison (plain-op kernels, the GELU primitive, sgemv decoding) has one.

use std::sync::atomic::{AtomicU8, Ordering};

/// See the module documentation.
pub struct Switch {
    var: &'static str,
    /// 0: not decided yet (read `var` on first use), 1: on, 2: off.
    state: AtomicU8,
}

impl Switch {
    /// A switch read from the environment variable `var` on first use.
    pub const fn new(var: &'static str) -> Self {
        Switch { var, state: AtomicU8::new(0) }
    }

    /// Set it for the whole process (overrides the environment).
    pub fn set(&self, on: bool) {
        self.state.store(if on { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// Whether it is on.
    pub fn get(&self) -> bool {
        match self.state.load(Ordering::Relaxed) {
            0 => {
                let off = std::env::var(self.var).is_ok_and(|v| v == "0" || v.eq_ignore_ascii_case("off"));
                self.set(!off);
                !off
            }
            s => s == 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_on_reads_the_environment_once_and_can_be_set() {
        static UNSET: Switch = Switch::new("MLX_GPT_SWITCH_TEST_UNSET");
        assert!(UNSET.get());
        UNSET.set(false);
        assert!(!UNSET.get());
        std::env::set_var("MLX_GPT_SWITCH_TEST_OFF", "off");
        static OFF: Switch = Switch::new("MLX_GPT_SWITCH_TEST_OFF");
        assert!(!OFF.get());
        OFF.set(true);
        assert!(OFF.get());
    }
}
