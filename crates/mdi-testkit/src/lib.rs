//! What the tests of every crate share (a dev-dependency only).

use std::io::Write;

/// Says in one line why a test (or a part of one) does not run here: on stderr, and in the
/// file named by `MDI_SKIP_LOG`, which scripts/test.sh lists at the end (cargo test hides the
/// stderr of tests that pass, so a skip would otherwise go unseen). The line names the test
/// binary and the test.
pub fn skip(why: impl std::fmt::Display) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    // The binary's file stem without cargo's hash suffix: `inspect-0123abcd` → `inspect`.
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| s.rsplit_once('-').map_or(s.clone(), |(name, _hash)| name.to_string()))
        .unwrap_or_default();
    // One line, even when `why` quotes a tool's multi-line message.
    let why = why.to_string().replace('\n', " ");
    eprintln!("SKIP {why}");
    if let Some(log) = std::env::var_os("MDI_SKIP_LOG") {
        // One write per line with O_APPEND: lines from parallel tests do not interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = f.write_all(format!("{binary}::{test}: {why}\n").as_bytes());
        }
    }
}
