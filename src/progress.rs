//! The `-p` progress bar shared by every long job (`check`, `repair`,
//! `convert`, `create` with preallocation, `zone report`).
//!
//! One bar covers the whole job from 0 to 100 %, as qemu-img's `-p` does: a
//! job made of steps (a check pass, then a second pass after a repair) gives
//! each step a window of the bar ([`Progress::window`]) and reports within
//! it ([`Progress::update`]). The bar only moves forward, and
//! [`Progress::finish`] leaves it drawn at 100 % on its own line.
//!
//! It is drawn on standard error, and only when standard error is a
//! terminal: standard output (reports, JSON) is never touched, and a pipe or
//! a file sees nothing extra. A hidden bar costs one branch per update, so
//! library code reports progress unconditionally.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bar length in steps: 0.01 % resolution, as qemu-img prints `%3.2f`.
const STEPS: u64 = 10_000;

/// A progress bar over one whole job (hidden unless asked for and stderr is
/// a terminal).
pub struct Progress {
    bar: Option<ProgressBar>,
    /// Current window `[lo, hi]` of the bar, in steps.
    window: Mutex<(u64, u64)>,
    /// Highest position drawn, so the bar never moves back.
    pos: AtomicU64,
    /// Drawn on the process's standard error (which then gets the newline
    /// that ends the bar's line).
    on_stderr: bool,
}

impl Progress {
    /// A bar that draws nothing.
    pub fn hidden() -> Self {
        Progress {
            bar: None,
            window: Mutex::new((0, STEPS)),
            pos: AtomicU64::new(0),
            on_stderr: false,
        }
    }

    /// The bar of a `-p` option: drawn when `enabled` and standard error is
    /// a terminal, hidden otherwise.
    pub fn new(enabled: bool) -> Self {
        if enabled && std::io::stderr().is_terminal() {
            let mut p = Self::to_target(ProgressDrawTarget::stderr());
            p.on_stderr = true;
            p
        } else {
            Self::hidden()
        }
    }

    /// A bar drawn on `target` (tests draw into memory).
    pub fn to_target(target: ProgressDrawTarget) -> Self {
        let bar = ProgressBar::with_draw_target(Some(STEPS), target);
        // The template is a constant: it parses (a unit test checks it).
        if let Ok(style) = ProgressStyle::with_template("    [{bar:40}] {percent:>3}%{msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress {
            bar: Some(bar),
            window: Mutex::new((0, STEPS)),
            pos: AtomicU64::new(0),
            on_stderr: false,
        }
    }

    /// Whether anything is drawn.
    pub fn is_drawn(&self) -> bool {
        self.bar.is_some()
    }

    /// Report the steps that follow within `[from, to]` of the whole job
    /// (fractions, 0.0 to 1.0). The bar moves to `from` if it is behind.
    pub fn window(&self, from: f64, to: f64) {
        let at = |f: f64| (f.clamp(0.0, 1.0) * STEPS as f64) as u64;
        let (lo, hi) = (at(from), at(to.max(from)));
        if let Ok(mut w) = self.window.lock() {
            *w = (lo, hi);
        }
        self.advance(lo);
    }

    /// The current window, as fractions of the job (a step that splits its
    /// window among sub-steps reads it first).
    pub fn current_window(&self) -> (f64, f64) {
        let (lo, hi) = self.window.lock().map(|w| *w).unwrap_or((0, STEPS));
        (lo as f64 / STEPS as f64, hi as f64 / STEPS as f64)
    }

    /// Name the step being done (shown after the percentage); `""` for none.
    pub fn phase(&self, what: impl Into<Cow<'static, str>>) {
        if let Some(b) = &self.bar {
            let what = what.into();
            if what.is_empty() {
                b.set_message("");
            } else {
                b.set_message(format!(" {what}"));
            }
        }
    }

    /// `done` of `total` units of the current window are done.
    pub fn update(&self, done: u64, total: u64) {
        if self.bar.is_none() {
            return;
        }
        let (lo, hi) = self.window.lock().map(|w| *w).unwrap_or((0, STEPS));
        let total = total.max(1);
        let done = done.min(total);
        // u128: done × window cannot overflow whatever the unit.
        let p = lo + ((hi - lo) as u128 * done as u128 / total as u128) as u64;
        self.advance(p);
    }

    fn advance(&self, p: u64) {
        if let Some(b) = &self.bar {
            let prev = self.pos.fetch_max(p, Ordering::Relaxed);
            if p > prev {
                b.set_position(p);
            }
        }
    }

    /// The job is done: draw 100 % and leave the bar on its own line.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            if !b.is_finished() {
                self.pos.store(STEPS, Ordering::Relaxed);
                b.set_message("");
                b.set_position(STEPS);
                b.finish();
                self.end_line();
            }
        }
    }

    /// indicatif leaves the cursor after a finished bar; what follows
    /// starts on a line of its own (qemu-img ends its progress line too).
    fn end_line(&self) {
        if self.on_stderr {
            let mut e = std::io::stderr();
            // A closed terminal has nothing more to show.
            let _ = e.write_all(b"\n").and_then(|_| e.flush());
        }
    }

    /// Run `f` (which prints on the terminal) with the bar taken off the
    /// screen, then draw it again.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    /// A writer for messages printed while the bar is drawn: whole lines
    /// are printed with the bar taken off the screen, so messages and the
    /// bar never share a line.
    pub fn writer<'a>(&'a self, inner: &'a mut dyn Write) -> ProgressWriter<'a> {
        ProgressWriter {
            progress: self,
            inner,
            line: Vec::new(),
        }
    }
}

impl Drop for Progress {
    /// A job that stopped early (an error) leaves the bar where it stopped,
    /// on its own line, so the error that follows reads cleanly.
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            if b.is_finished() {
                return;
            }
            if self.pos.load(Ordering::Relaxed) == 0 {
                // Never drawn (the job failed at once): nothing to leave.
                b.finish_and_clear();
            } else {
                b.abandon();
                self.end_line();
            }
        }
    }
}

/// See [`Progress::writer`].
pub struct ProgressWriter<'a> {
    progress: &'a Progress,
    inner: &'a mut dyn Write,
    line: Vec<u8>,
}

impl ProgressWriter<'_> {
    fn emit(&mut self, upto: usize) -> std::io::Result<()> {
        let rest = self.line.split_off(upto);
        let done = std::mem::replace(&mut self.line, rest);
        let inner = &mut *self.inner;
        self.progress.suspend(|| inner.write_all(&done))
    }
}

impl Write for ProgressWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.progress.is_drawn() {
            return self.inner.write(buf);
        }
        self.line.extend_from_slice(buf);
        if let Some(nl) = self.line.iter().rposition(|&c| c == b'\n') {
            self.emit(nl + 1)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.line.is_empty() {
            self.emit(self.line.len())?;
        }
        self.inner.flush()
    }
}

impl Drop for ProgressWriter<'_> {
    fn drop(&mut self) {
        // Nowhere to report a failure from a drop; the caller flushes when
        // it cares.
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses() {
        assert!(ProgressStyle::with_template("    [{bar:40}] {percent:>3}%{msg}").is_ok());
    }

    #[test]
    fn windows_map_into_the_whole_bar_and_never_go_back() {
        let p = Progress::to_target(ProgressDrawTarget::hidden());
        p.window(0.5, 1.0);
        p.update(1, 2);
        assert_eq!(p.pos.load(Ordering::Relaxed), 7_500);
        p.window(0.0, 0.5);
        p.update(1, 1);
        assert_eq!(p.pos.load(Ordering::Relaxed), 7_500, "moved back");
        p.window(0.0, 1.0);
        p.update(u64::MAX, u64::MAX);
        assert_eq!(p.pos.load(Ordering::Relaxed), STEPS);
        p.finish();
        assert!(p.bar.as_ref().is_some_and(|b| b.is_finished()));
    }

    #[test]
    fn hidden_writer_passes_bytes_through() {
        let p = Progress::hidden();
        let mut out = Vec::new();
        {
            let mut w = p.writer(&mut out);
            write!(w, "a").unwrap();
            writeln!(w, "b").unwrap();
        }
        assert_eq!(out, b"ab\n");
    }

    #[test]
    fn drawn_writer_prints_whole_lines() {
        let p = Progress::to_target(ProgressDrawTarget::hidden());
        let mut out = Vec::new();
        {
            let mut w = p.writer(&mut out);
            write!(w, "ERROR ").unwrap();
            write!(w, "x\nnext").unwrap();
        }
        assert_eq!(out, b"ERROR x\nnext");
    }
}
