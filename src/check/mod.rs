//! Consistency check and repair (`zcow-img check`, `zcow-img repair`).
//!
//! For plain qcow2 images the check reproduces `qemu-img check` 10: the same
//! reference walk, item messages, summary, JSON and exit codes. Zoned images
//! get extra checks (see [`zoned`]). Repair fixes what qemu-img fixes, except
//! where qemu-img's repair is unsafe: there zcow refuses the step and says
//! why (see `docs/check-and-repair.md`).
//!
//! Entry points for the CLI: [`run_check`] and [`run_repair`].

mod bitmaps;
mod compare;
pub mod errno;
mod image;
mod imrt;
mod l1locate;
mod mapfix;
mod rebuild;
pub mod repair;
pub mod report;
mod snapshots;
mod walk;
pub mod zoned;

pub use repair::{run_repair, undo_repair, RepairOptions};

use crate::format::features::{
    AUTOCLEAR_BITMAPS, AUTOCLEAR_DATA_FILE_RAW, INCOMPAT_CORRUPT, INCOMPAT_DIRTY,
};
use crate::progress::Progress;
use crate::storage::{FileStorage, Storage};
use errno::{strerror, Errno, EIO};
use image::{CheckImage, OpenError};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// What `-r` asks to repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairMode {
    /// `-r leaks`: leaked clusters (and COPIED flags when nothing else is
    /// wrong), stale zone clusters.
    Leaks,
    /// `-r all`: everything repair can derive safely.
    All,
}

impl RepairMode {
    /// Parse a `-r` argument. The error is qemu-img's message (print it
    /// with the `zcow-img: ` prefix, then `Try 'zcow-img check --help' for
    /// more info`, and exit 1).
    pub fn from_arg(s: &str) -> Result<Self, String> {
        match s {
            "leaks" => Ok(RepairMode::Leaks),
            "all" => Ok(RepairMode::All),
            _ => Err(format!("--repair (-r) expects 'leaks' or 'all' not '{s}'")),
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Human-readable summary.
    #[default]
    Human,
    /// QEMU `ImageCheck` JSON.
    Json,
}

impl OutputFormat {
    /// Parse an `--output` argument (qemu-img's message on failure; print
    /// it like [`RepairMode::from_arg`]'s).
    pub fn from_arg(s: &str) -> Result<Self, String> {
        match s {
            "human" => Ok(OutputFormat::Human),
            "json" => Ok(OutputFormat::Json),
            _ => Err(format!("--output expects 'human' or 'json' not '{s}'")),
        }
    }
}

/// Options of `zcow-img check`.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// `-r leaks|all`.
    pub repair: Option<RepairMode>,
    /// `--output`.
    pub output: OutputFormat,
    /// `-q`: no stdout at all.
    pub quiet: bool,
    /// `-p`: progress bar (only when stderr is a terminal).
    pub progress: bool,
    /// `-f FMT`: `None` probes like qemu-img (a file without the qcow2
    /// magic is "raw" and cannot be checked: exit 63); `Some("qcow2")`
    /// insists on qcow2 (such a file fails to open: exit 1); `Some("raw")`
    /// always gives exit 63.
    pub format: Option<String>,
    /// The file name as the user gave it (for messages and JSON); defaults
    /// to the path.
    pub display_name: Option<String>,
}

/// Fix mode bits (QEMU `BdrvCheckMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Fix {
    pub leaks: bool,
    pub errors: bool,
}

impl Fix {
    fn any(self) -> bool {
        self.leaks || self.errors
    }
}

/// Counters of one check (QEMU `BdrvCheckResult` plus fragmentation info).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Internal errors (I/O, unreadable structures).
    pub check_errors: i64,
    /// Corruptions found and not fixed.
    pub corruptions: i64,
    /// Leaked clusters found and not fixed.
    pub leaks: i64,
    /// Corruptions fixed.
    pub corruptions_fixed: i64,
    /// Leaks fixed.
    pub leaks_fixed: i64,
    /// `(highest used cluster + 1) × cluster size`.
    pub image_end_offset: u64,
    /// Guest clusters of the virtual disk.
    pub total_clusters: u64,
    /// Allocated guest clusters (active L1).
    pub allocated_clusters: u64,
    /// Fragmented guest clusters.
    pub fragmented_clusters: u64,
    /// Compressed guest clusters.
    pub compressed_clusters: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts, alloc_info: bool) {
        self.check_errors += o.check_errors;
        self.corruptions += o.corruptions;
        self.leaks += o.leaks;
        self.corruptions_fixed += o.corruptions_fixed;
        self.leaks_fixed += o.leaks_fixed;
        if alloc_info {
            self.image_end_offset = o.image_end_offset;
            self.total_clusters = o.total_clusters;
            self.allocated_clusters = o.allocated_clusters;
            self.fragmented_clusters = o.fragmented_clusters;
            self.compressed_clusters = o.compressed_clusters;
        }
    }
}

/// The outcome of a whole `check` run.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// Final counts (pass 2's after a repair, with pass 1's fixed counts).
    pub counts: Counts,
    /// Zoned section (zoned images only).
    pub zoned: Option<zoned::ZonedSummary>,
    /// Error that ended the check early (errno), if any.
    pub failed: Option<Errno>,
    /// Guest ranges whose data the repair dropped.
    pub lost: Vec<Lost>,
    /// Zones whose write pointer the repair moved.
    pub wp_changes: Vec<WpChange>,
    /// Snapshots the repair dropped.
    pub lost_snapshots: Vec<String>,
    /// Whether the check ran with a repair mode and wrote nothing (or
    /// wrote something): used to say "Nothing lost".
    pub repaired: bool,
}

/// A guest byte range whose data a repair dropped (it now reads as zeroes,
/// or as the backing file) or could not keep as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// First guest byte.
    pub guest: u64,
    /// Length in bytes.
    pub len: u64,
    /// Why the data could not be kept.
    pub why: String,
    /// The snapshot whose view lost the range (`snapshot ID (NAME)`);
    /// `None` for the active image.
    pub snapshot: Option<String>,
}

/// A zone whose write pointer a repair moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WpChange {
    /// Zone index.
    pub zone: u32,
    /// Write pointer before the repair (guest byte offset).
    pub old: u64,
    /// Write pointer after the repair.
    pub new: u64,
}

/// Working context of a check pass.
pub(crate) struct Ctx<'a> {
    pub img: CheckImage,
    pub err: &'a mut dyn Write,
    pub prog: &'static str,
    pub snaps: snapshots::Snaps,
    pub zones: Option<zoned::ZoneMap>,
    /// The `-p` bar (hidden when not drawn).
    pub progress: &'a Progress,
    /// The window of the bar this pass reports in (fractions of the job).
    pub pass: (f64, f64),
    /// Guest ranges the repair dropped (accumulated over both passes).
    pub lost: Vec<Lost>,
    /// Write pointers the repair moved.
    pub wp_changes: Vec<WpChange>,
    /// Snapshots the repair dropped (their tables could not be located).
    pub lost_snapshots: Vec<String>,
}

impl Ctx<'_> {
    /// Name the phase shown by the progress bar and move to its share of
    /// the pass: the reference walk and the refcount comparison are the
    /// long ones.
    pub fn phase(&self, what: &'static str) {
        let (a, b) = match what {
            "counting references" => (0.0, 0.6),
            "comparing refcounts" => (0.6, 0.95),
            _ => (0.95, 1.0),
        };
        let (lo, hi) = self.pass;
        self.progress.window(lo + (hi - lo) * a, lo + (hi - lo) * b);
        self.progress.phase(what);
    }

    /// `done` of `total` units of the current phase are done.
    pub fn progress(&self, done: u64, total: u64) {
        self.progress.update(done, total);
    }
}

/// QEMU `qcow2_check_refcounts`. Returns the final walk on success.
fn check_refcounts(cx: &mut Ctx, res: &mut Counts, fix: Fix) -> Result<walk::Walk, Errno> {
    let size = cx.img.file_len();
    let cs = cx.img.cs;
    let nb = size.div_ceil(cs);
    if nb > i32::MAX as u64 {
        res.check_errors += 1;
        return Err(errno::EFBIG);
    }
    res.total_clusters = (cx.img.header.size / 512 * 512).div_ceil(cs);
    let mut rebuild = false;
    let track = fix.any()
        || cx.img.header.zoned().is_some()
        || cx.img.header.incompatible_features & crate::format::features::INCOMPAT_ZONED != 0;
    let mut w =
        walk::Walk::new(cx.img.order, cs, nb, track).inspect_err(|_| res.check_errors += 1)?;
    walk::calculate_refcounts(cx, res, fix, &mut rebuild, &mut w)?;
    let mut rounds = 0;
    // A new empty L1 table leaves the old tables and data as leaks: kept,
    // not freed (they are what is left of the guest's data).
    let mut keep_leaks = false;
    while fix.errors && rounds < 3 {
        rounds += 1;
        let moved = if rounds == 1 {
            l1locate::relocate(cx).inspect_err(|_| res.check_errors += 1)?
        } else {
            l1locate::Relocated::No
        };
        keep_leaks |= moved == l1locate::Relocated::Empty;
        let (_applied, refused) = if moved == l1locate::Relocated::No {
            mapfix::apply_prealloc(cx, &w).inspect_err(|_| res.check_errors += 1)?
        } else {
            (0, 0)
        };
        mapfix::apply_prealloc(cx, &w).inspect_err(|_| res.check_errors += 1)?;
        res.corruptions_fixed -= refused;
        res.corruptions += refused;
        let mut n = if moved != l1locate::Relocated::No {
            1
        } else if res.corruptions > 0 || w.any_distrust().is_some() {
            mapfix::fix_mappings(cx, &w).inspect_err(|_| res.check_errors += 1)?
        } else {
            0
        };
        if !w.incomplete.is_empty() && moved == l1locate::Relocated::No {
            n += snapshots::fix_l1_refs(cx).inspect_err(|_| res.check_errors += 1)?;
        }
        if n == 0 {
            break;
        }
        // Walk again over the repaired mapping, quietly: what is left was
        // reported by the first walk.
        let fixed = res.corruptions_fixed + n;
        let total = res.total_clusters;
        *res = Counts {
            total_clusters: total,
            ..Counts::default()
        };
        rebuild = false;
        let nb = cx.img.file_len().div_ceil(cs);
        w = walk::Walk::new(cx.img.order, cs, nb, track).inspect_err(|_| res.check_errors += 1)?;
        w.no_prealloc_fix = true;
        let sink: &mut dyn Write = Box::leak(Box::new(std::io::sink()));
        let err = std::mem::replace(&mut cx.err, sink);
        let r = walk::calculate_refcounts(cx, res, fix, &mut rebuild, &mut w);
        cx.err = err;
        r?;
        res.corruptions_fixed += fixed;
    }
    let fix = Fix {
        leaks: fix.leaks && !keep_leaks,
        ..fix
    };
    if keep_leaks {
        let _ = writeln!(
            cx.err,
            "zcow: Not freeing leaked clusters: they hold the old L1 table, its L2 tables and data; `check -r leaks` frees them once they are not needed"
        );
    }
    // References a repair removed are durable before any refcount drops.
    if fix.any() {
        cx.img.sync().inspect_err(|_| res.check_errors += 1)?;
    }
    let pre = res.clone();
    let (mut highest, mut same) =
        compare::compare_refcounts(cx, res, Fix::default(), &mut rebuild, &w);

    let refusal = if rebuild && fix.errors && keep_leaks {
        Some("the old L1 table's clusters would lose their refcounts".to_string())
    } else if rebuild && fix.errors {
        w.incomplete
            .first()
            .map(|why| {
                format!(
                    "{why}; a rebuild would give refcount 0 to clusters that may still be in use"
                )
            })
            .or_else(|| {
                w.rebuild_distrust().map(|why| {
                    format!("{why}; a rebuild would make the corruption look consistent")
                })
            })
    } else {
        None
    };
    if let Some(why) = &refusal {
        let _ = writeln!(cx.err, "zcow: Not rebuilding the refcount structure: {why}");
    }
    if rebuild && fix.errors && refusal.is_none() {
        let old = res.clone();
        let _ = writeln!(cx.err, "Rebuilding refcount structure");
        if let Err(e) = rebuild::rebuild(cx, &mut w) {
            res.check_errors += 1;
            return Err(e);
        }
        res.corruptions = 0;
        res.leaks = 0;
        rebuild = false;
        same = false; // the refcounts on disk are new
        let n = w.imrt.n;
        let mut w2 = walk::Walk::new(cx.img.order, cs, n, true)?;
        walk::calculate_refcounts(cx, res, Fix::default(), &mut rebuild, &mut w2)?;
        w = w2;
        let mut fresh_leaks = 0;
        if fix.leaks {
            let saved = res.clone();
            *res = Counts::default();
            (highest, same) = compare::compare_refcounts(
                cx,
                res,
                Fix {
                    leaks: true,
                    errors: false,
                },
                &mut rebuild,
                &w,
            );
            if rebuild {
                let _ = writeln!(cx.err, "ERROR rebuilt refcount structure is still broken");
            }
            fresh_leaks = res.leaks;
            *res = saved;
        }
        if res.corruptions < old.corruptions {
            res.corruptions_fixed += old.corruptions - res.corruptions;
        }
        if res.leaks < old.leaks {
            res.leaks_fixed += old.leaks - res.leaks;
        }
        res.leaks += fresh_leaks;
    } else if fix.any() {
        if rebuild {
            let _ = writeln!(cx.err, "ERROR need to rebuild refcount structures");
            if !fix.errors {
                let _ = writeln!(cx.err, "zcow: run with -r all to rebuild them");
            }
            res.check_errors += 1;
            return Err(EIO);
        }
        if res.leaks != 0 || res.corruptions != 0 {
            *res = pre;
            (highest, same) = compare::compare_refcounts(cx, res, fix, &mut rebuild, &w);
        }
    }
    // COPIED is set only once the refcount it claims (1) is durable.
    if fix.any() {
        cx.img.sync().inspect_err(|_| res.check_errors += 1)?;
    }
    compare::check_oflag_copied(cx, res, fix, &w, same)?;
    res.image_end_offset = (highest + 1) * cs;
    Ok(w)
}

/// One check pass (QEMU `qcow2_co_check_locked` plus the zoned checks).
fn check_pass(cx: &mut Ctx, fix: Fix) -> (Counts, Option<zoned::ZonedSummary>, Result<(), Errno>) {
    let mut result = Counts::default();
    let mut snap = Counts::default();
    cx.progress.window(cx.pass.0, cx.pass.0);
    if let Err(e) = snapshots::read_table(cx, &mut snap, fix) {
        result.add(&snap, false);
        return (result, None, Err(e));
    }
    cx.zones = zoned::prepare(cx);
    let mut rc = Counts::default();
    let r = check_refcounts(cx, &mut rc, fix);
    result.add(&rc, true);
    let w = match r {
        Ok(w) => w,
        Err(e) => {
            result.add(&snap, false);
            return (result, None, Err(e));
        }
    };
    let r = snapshots::fix_table(cx, &mut snap, fix);
    result.add(&snap, false);
    if let Err(e) = r {
        return (result, None, Err(e));
    }
    let mut zres = Counts::default();
    let zsum = zoned::check(
        cx,
        &mut zres,
        fix,
        &w,
        result.corruptions == 0 && result.check_errors == 0,
        result.compressed_clusters > 0,
    );
    result.add(&zres, false);
    cx.progress.window(cx.pass.1, cx.pass.1);
    if fix.any() && result.check_errors == 0 && result.corruptions == 0 {
        let inc = cx.img.header.incompatible_features;
        if cx.img.header.version >= 3 && inc & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT) != 0 {
            let n = inc & !(INCOMPAT_DIRTY | INCOMPAT_CORRUPT);
            // The repairs above are durable before the header says the
            // image is consistent.
            if let Err(e) = cx
                .img
                .sync()
                .and_then(|_| {
                    cx.img.write_header_field(
                        crate::format::header::field::INCOMPAT,
                        &n.to_be_bytes(),
                    )
                })
                .and_then(|_| cx.img.sync())
            {
                return (result, zsum, Err(e));
            }
            cx.img.header.incompatible_features = n;
        }
    }
    (result, zsum, Ok(()))
}

/// Run a whole check (both passes) on an opened store. Item messages go to
/// `err`; nothing is printed to stdout. `prog` prefixes error lines.
/// Progress is reported within the current window of `progress` (a repair
/// spends the first 70 % on the repairing pass, the rest on the pass that
/// checks the result); the caller finishes the bar.
pub fn check_store(
    store: Arc<dyn Storage>,
    repair: Option<RepairMode>,
    progress: &Progress,
    err: &mut dyn Write,
    mut on_preamble: impl FnMut(&Counts),
) -> Result<CheckReport, CheckOpenError> {
    let fix = match repair {
        None => Fix::default(),
        Some(RepairMode::Leaks) => Fix {
            leaks: true,
            errors: false,
        },
        Some(RepairMode::All) => Fix {
            leaks: true,
            errors: true,
        },
    };
    let img = match CheckImage::open(store, fix.any()) {
        Ok(i) => i,
        Err(OpenError::NotSupported) => return Err(CheckOpenError::NotSupported),
        Err(OpenError::Refused(m)) => return Err(CheckOpenError::Refused(m)),
    };
    let (lo, hi) = progress.current_window();
    let split = if fix.any() { lo + (hi - lo) * 0.7 } else { hi };
    let mut cx = Ctx {
        img,
        err,
        prog: crate::personality::name(crate::personality::Tool::Img),
        snaps: Default::default(),
        zones: None,
        progress,
        pass: (lo, split),
        lost: Vec::new(),
        wp_changes: Vec::new(),
        lost_snapshots: Vec::new(),
    };
    // A read-write open clears unknown autoclear bits, as QEMU's does.
    if fix.any() && cx.img.header.version >= 3 {
        let ac = cx.img.header.autoclear_features;
        let known = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW;
        if ac & !known != 0 {
            let n = ac & known;
            if cx
                .img
                .write_header_field(crate::format::header::field::AUTOCLEAR, &n.to_be_bytes())
                .and_then(|_| cx.img.sync())
                .is_ok()
            {
                cx.img.header.autoclear_features = n;
            }
        }
    }
    let (c1, z1, r1) = check_pass(&mut cx, fix);
    let synced = cx.img.sync();
    let repaired = fix.any();
    if let Err(e) = r1.and(synced) {
        return Ok(CheckReport {
            counts: Counts::default(),
            zoned: z1,
            failed: Some(e),
            lost: std::mem::take(&mut cx.lost),
            wp_changes: std::mem::take(&mut cx.wp_changes),
            lost_snapshots: std::mem::take(&mut cx.lost_snapshots),
            repaired,
        });
    }
    let mut report = CheckReport {
        counts: c1.clone(),
        zoned: z1,
        failed: None,
        lost: Vec::new(),
        wp_changes: Vec::new(),
        lost_snapshots: Vec::new(),
        repaired,
    };
    if c1.corruptions_fixed != 0 || c1.leaks_fixed != 0 {
        on_preamble(&c1);
        cx.pass = (split, hi);
        let (mut c2, z2, r2) = check_pass(&mut cx, Fix::default());
        c2.leaks_fixed = c1.leaks_fixed;
        c2.corruptions_fixed = c1.corruptions_fixed;
        report.counts = c2;
        report.zoned = z2;
        report.failed = r2.err();
    }
    report.lost = std::mem::take(&mut cx.lost);
    report.wp_changes = std::mem::take(&mut cx.wp_changes);
    report.lost_snapshots = std::mem::take(&mut cx.lost_snapshots);
    progress.window(hi, hi);
    Ok(report)
}

/// Why a store could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckOpenError {
    /// Not a qcow2 image (QEMU would probe it as raw/qcow): exit 63.
    #[error("This image format does not support checks")]
    NotSupported,
    /// The header is invalid: exit 1.
    #[error("{0}")]
    Refused(String),
}

impl CheckOpenError {
    /// The error for a file that could not be opened at all (QEMU names
    /// the file twice: once for the image, once for its protocol layer).
    fn unopenable(name: &str, e: &std::io::Error) -> Self {
        // A lock conflict (or a directory) reads as QEMU prints it.
        if let Some(m) = crate::storage::open_refusal(e) {
            return CheckOpenError::Refused(m);
        }
        let m = strerror(e.raw_os_error().unwrap_or(EIO));
        CheckOpenError::Refused(format!("Could not open '{name}': {m}"))
    }

    /// Prints QEMU's line for an image that cannot be checked and returns
    /// the exit code (`check` and `repair` share both).
    fn report(&self, err: &mut dyn Write, name: &str) -> std::io::Result<i32> {
        match self {
            CheckOpenError::NotSupported => {
                writeln!(
                    err,
                    "{}: This image format does not support checks",
                    crate::personality::name(crate::personality::Tool::Img)
                )?;
                Ok(63)
            }
            CheckOpenError::Refused(m) => {
                writeln!(
                    err,
                    "{}: Could not open '{name}': {m}",
                    crate::personality::name(crate::personality::Tool::Img)
                )?;
                Ok(1)
            }
        }
    }
}

/// `zcow-img check`: prints like `qemu-img check` and returns the exit code
/// (0 clean, 1 check failed, 2 corruptions, 3 leaks only, 63 not checkable).
pub fn run_check(
    path: &Path,
    opts: &CheckOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<i32> {
    let name = opts
        .display_name
        .clone()
        .unwrap_or_else(|| path.display().to_string());
    let store = match FileStorage::open(path, opts.repair.is_none()) {
        Ok(s) => Arc::new(s) as Arc<dyn Storage>,
        Err(e) => return Ok(CheckOpenError::unopenable(&name, &e).report(err, &name)?),
    };
    let human = opts.output == OutputFormat::Human;
    let quiet = opts.quiet;
    if opts.format.as_deref() == Some("raw") {
        return Ok(CheckOpenError::NotSupported.report(err, &name)?);
    }
    let mut pre_out: Vec<u8> = Vec::new();
    let progress = Progress::new(opts.progress);
    let mut perr = progress.writer(err);
    let r = check_store(store, opts.repair, &progress, &mut perr, |c| {
        if human && !quiet {
            report::write_preamble(&mut pre_out, c);
        }
    });
    perr.flush()?;
    drop(perr);
    if matches!(&r, Ok(rep) if rep.failed.is_none()) {
        progress.finish();
    } else {
        // Off the screen before the error is printed.
        drop(progress);
    }
    out.write_all(&pre_out)?;
    let rep = match r {
        Ok(r) => r,
        Err(CheckOpenError::NotSupported) if opts.format.as_deref() == Some("qcow2") => {
            let mut head = [0u8; 8];
            let n = std::fs::File::open(path)
                .and_then(|f| std::os::unix::fs::FileExt::read_at(&f, &mut head, 0))
                .unwrap_or(0);
            let m = if n == 8 && head[..4] == *b"QFI\xfb" && head[4..] == [0, 0, 0, 1] {
                "Unsupported qcow2 version 1"
            } else {
                "Image is not in qcow2 format"
            };
            return Ok(CheckOpenError::Refused(m.into()).report(err, &name)?);
        }
        Err(e) => return Ok(e.report(err, &name)?),
    };
    if rep.repaired && (rep.counts.corruptions_fixed != 0 || rep.counts.leaks_fixed != 0) {
        let mut lines = Vec::new();
        report::write_losses(&mut lines, &rep, false)?;
        for l in String::from_utf8_lossy(&lines).lines() {
            writeln!(err, "zcow: {l}")?;
        }
    }
    Ok(report::finish(&rep, &name, opts.output, quiet, out, err)?)
}
