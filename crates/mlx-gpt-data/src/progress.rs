//! Progress bars: bytes with rate and ETA on a terminal; hidden when output is not one
//! (logs then carry the figures).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar counting bytes (`total` when known), with bytes/s and ETA.
pub fn bytes(total: Option<u64>, message: impl Into<String>) -> ProgressBar {
    let bar = match total {
        Some(t) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template(
                "{msg:30!} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} ETA {eta}",
            )
            .expect("valid template"),
        ),
        None => ProgressBar::no_length().with_style(
            ProgressStyle::with_template("{msg:30!} {bytes:>10} {bytes_per_sec:>12} {elapsed}")
                .expect("valid template"),
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.with_message(message.into())
}

/// A bar counting `len` items with `template` (indicatif's syntax) on stderr, when `show`
/// and stderr is a terminal; hidden otherwise.
pub fn counter(len: u64, template: &str, show: bool) -> ProgressBar {
    if !show || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_style(ProgressStyle::with_template(template).expect("valid template"));
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar
}
