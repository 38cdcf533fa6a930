//! Progress bars for the long commands (`simulate`, `train`, `telemetry import`, and reading a
//! telemetry file for any risk command), drawn on stderr only when stderr is a terminal. Tests
//! and CI capture stderr, so there the bars are hidden and print nothing. The risk core knows
//! nothing of this; it takes plain callbacks (bytes read, rows stored) that feed a bar here.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Rows or appliances, counted.
const COUNT: &str = "{msg} [{bar:30}] {human_pos}/{human_len} ({eta} left)";
/// Bytes of a file.
const BYTES: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} ({eta} left)";
/// Work with no known length.
const SPINNER: &str = "{spinner} [{elapsed}] {msg}";

/// Where a bar may draw: stderr when it is a terminal, nowhere otherwise.
fn bar(len: Option<u64>, template: &str, msg: String) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        }
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(msg);
    bar
}

/// A bar counting `len` things (rows, appliances).
pub fn count(len: u64, msg: impl Into<String>) -> ProgressBar {
    bar(Some(len), COUNT, msg.into())
}

/// A bar counting the `len` bytes of a file.
pub fn bytes(len: u64, msg: impl Into<String>) -> ProgressBar {
    bar(Some(len), BYTES, msg.into())
}

/// A spinner with the latest message, for steps whose length is unknown.
pub fn spinner(msg: impl Into<String>) -> ProgressBar {
    bar(None, SPINNER, msg.into())
}
