//! A zcow-io session: the open device, background (aio) requests, and the
//! execution of parsed commands with qemu-io's output.

use super::format::{cvtstr, error_errno, report, strerror, write_dump};
use super::parse::{breakline, parse_args, Command, ReportOpts, Verify, WriteSource, WriteTarget};
use super::table::{check_arg_count, find, help_all, usage_line};
use crate::device::{check_range, BlockDevice, DevResult, DeviceError, ZeroFlags};
use crate::format::FormatError;
use crate::open::OpenOptions;
use std::io::{self, Write};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which address space a read or write goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Area {
    /// The virtual disk.
    Disk,
    /// The VM-state area past it (`-b`).
    VmState,
}

/// How a session opens images for the `open` command.
pub type Opener = Box<dyn FnMut(&str, &OpenOptions) -> DevResult<Arc<dyn BlockDevice>> + Send>;

/// What became of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Succeeded (qemu-io return value >= 0).
    Ok,
    /// Failed with this errno (qemu-io returned `-errno`); the exit code
    /// of the program becomes 1.
    Failed(i32),
    /// `quit`: run no further commands.
    Quit,
}

/// Stdout, stderr and exit code of a run of commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOutput {
    /// Everything printed to stdout.
    pub stdout: String,
    /// Everything printed to stderr.
    pub stderr: String,
    /// 0, or 1 if any command failed (as qemu-io).
    pub exit_code: i32,
}

impl ScriptOutput {
    /// Stdout with the timing of report lines replaced by fixed text (see
    /// [`super::normalize_timing`]): what scenario tests compare.
    pub fn normalized_stdout(&self) -> String {
        super::format::normalize_timing(&self.stdout)
    }
}

/// Description of a background request, kept outside its thread so a
/// panicking device still gets a result line.
struct AioMeta {
    write: bool,
    offset: u64,
    size: u64,
    verify: Option<u8>,
    dump: bool,
    report: ReportOpts,
}

type AioResult = (DevResult<()>, Vec<u8>, Duration);

enum AioState {
    Running(JoinHandle<AioResult>),
    Done(AioResult),
}

/// A zcow-io session.
pub struct Session {
    dev: Option<Arc<dyn BlockDevice>>,
    opener: Opener,
    pending: Vec<(AioMeta, AioState)>,
    failed: bool,
    prog: String,
    /// Path and options of the open image, for `reopen`.
    origin: Option<(String, OpenOptions)>,
    /// `abort` and `sigraise` act on the process (off in library use:
    /// tests and fuzzers run sessions inside their own process).
    process_commands: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("dev", &self.dev)
            .field("pending", &self.pending.len())
            .field("failed", &self.failed)
            .finish()
    }
}

/// The default opener: [`crate::open::open_device`].
pub fn default_opener() -> Opener {
    Box::new(|path, opts| crate::open::open_device(std::path::Path::new(path), opts))
}

fn line(w: &mut dyn Write, s: impl AsRef<str>) -> io::Result<()> {
    writeln!(w, "{}", s.as_ref())
}

impl Session {
    /// A session on `dev` (or with no file open), opening further images
    /// with [`default_opener`].
    pub fn new(dev: Option<Arc<dyn BlockDevice>>) -> Self {
        Self {
            dev,
            opener: default_opener(),
            pending: Vec::new(),
            failed: false,
            prog: crate::personality::name(crate::personality::Tool::Io).into(),
            origin: None,
            process_commands: false,
        }
    }

    /// Use `opener` for the `open` command (tests: reopen an in-memory
    /// image as a power cycle).
    pub fn with_opener(mut self, opener: Opener) -> Self {
        self.opener = opener;
        self
    }

    /// The open device, if any.
    pub fn device(&self) -> Option<&Arc<dyn BlockDevice>> {
        self.dev.as_ref()
    }

    /// Whether any command failed so far.
    pub fn any_failed(&self) -> bool {
        self.failed
    }

    /// qemu-io's exit code: 1 if any command failed, else 0.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.failed)
    }

    /// Run one command line (qemu-io syntax), printing to `out` and `err`
    /// exactly where qemu-io prints. Errors are only write errors of the
    /// output streams.
    pub fn run_command(
        &mut self,
        line_text: &str,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> io::Result<Status> {
        let ret = self.dispatch(line_text, out, err)?;
        Ok(match ret {
            Dispatch::Quit => Status::Quit,
            Dispatch::Ret(r) if r < 0 => {
                self.failed = true;
                Status::Failed(-r)
            }
            Dispatch::Ret(_) => Status::Ok,
        })
    }

    /// Wait for background requests, print their results, flush and close
    /// the device (what qemu-io does at exit).
    pub fn finish(&mut self, out: &mut dyn Write, err: &mut dyn Write) -> io::Result<()> {
        self.close_device(out, err)
    }

    /// Run `commands` in order (stopping at `quit`), then [`Self::finish`];
    /// returns everything printed and the exit code.
    pub fn run_script(&mut self, commands: &[&str]) -> ScriptOutput {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for c in commands {
            // Writing into a Vec cannot fail.
            match self.run_command(c, &mut out, &mut err) {
                Ok(Status::Quit) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = self.finish(&mut out, &mut err);
        ScriptOutput {
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            exit_code: self.exit_code(),
        }
    }

    fn dispatch(
        &mut self,
        text: &str,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> io::Result<Dispatch> {
        let argv = breakline(text);
        let Some(name) = argv.first() else {
            return Ok(Dispatch::Ret(0));
        };
        let Some(spec) = find(name) else {
            line(err, format!("command \"{name}\" not found"))?;
            return Ok(Dispatch::Ret(-libc::EINVAL));
        };
        if !spec.nofile_ok && self.dev.is_none() {
            line(err, "no file open, try 'help open'")?;
            return Ok(Dispatch::Ret(-libc::EINVAL));
        }
        if let Some(msg) = check_arg_count(name, spec, argv.len() - 1) {
            line(err, msg)?;
            return Ok(Dispatch::Ret(-libc::EINVAL));
        }
        if spec.writes && self.dev.as_ref().is_some_and(|d| d.is_read_only()) {
            line(err, format!("{}: Block node is read-only", self.prog))?;
            return Ok(Dispatch::Ret(-libc::EPERM));
        }
        let cmd = match parse_args(spec, &argv) {
            Ok(c) => c,
            Err(e) => {
                for m in &e.messages {
                    line(if m.to_stderr { &mut *err } else { &mut *out }, &m.text)?;
                }
                return Ok(Dispatch::Ret(-e.errno));
            }
        };
        if cmd == Command::Quit {
            return Ok(Dispatch::Quit);
        }
        self.execute(cmd, out, err).map(Dispatch::Ret)
    }

    /// Print `"{what} failed: {strerror}"` (stdout, as qemu-io) and, under
    /// zcow's own name, the full error (stderr: zone index, condition,
    /// wp...); returns `-errno`.
    fn fail(
        &self,
        out: &mut dyn Write,
        err: &mut dyn Write,
        what: &str,
        e: &DeviceError,
    ) -> io::Result<i32> {
        let errno = error_errno(e);
        line(out, format!("{what} failed: {}", strerror(errno)))?;
        // The detail is zcow's addition; under QEMU's name, QEMU's lines only.
        if !crate::personality::is_qemu() {
            line(err, format!("{}: {e}", self.prog))?;
        }
        Ok(-errno)
    }

    /// Execute a parsed command; returns qemu-io's return value.
    pub fn execute(
        &mut self,
        cmd: Command,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> io::Result<i32> {
        // Commands without a device first.
        match cmd {
            Command::Help { topic } => return self.help(topic, out),
            Command::Sleep { ms } => {
                std::thread::sleep(Duration::from_millis(ms));
                return Ok(0);
            }
            Command::Quit => return Ok(0),
            Command::Open {
                path,
                read_only,
                format,
                force_share,
                options,
            } => {
                let mut opts = OpenOptions {
                    format,
                    read_only,
                    allow_backing: true,
                };
                let mut path = path;
                for (k, v) in options {
                    match k.as_str() {
                        "driver" => opts.format = Some(v),
                        "read-only" => opts.read_only = matches!(v.as_str(), "on" | "true"),
                        "file.filename" | "filename" => path = v,
                        // Cache, AIO, discard and qcow2 tuning: recorded.
                        _ => {}
                    }
                }
                return self.open(&path, opts, force_share, err);
            }
            Command::Abort | Command::Sigraise { .. } if !self.process_commands => {
                line(
                    err,
                    "abort and sigraise are only available in the zcow-io program",
                )?;
                return Ok(-libc::ENOTSUP);
            }
            Command::Abort => {
                out.flush()?;
                std::process::abort();
            }
            Command::Sigraise { sig } => {
                out.flush()?;
                // SAFETY: raise(3) with a signal number; the default action
                // (or the handler the process has) is what the user asked for.
                unsafe { libc::raise(sig) };
                return Ok(0);
            }
            Command::Reopen { read_only, options } => {
                return self.reopen(read_only, &options, out, err)
            }
            Command::Close => {
                self.close_device(out, err)?;
                return Ok(0);
            }
            _ => {}
        }
        let Some(dev) = self.dev.clone() else {
            line(err, "no file open, try 'help open'")?;
            return Ok(-libc::EINVAL);
        };
        let dev = dev.as_ref();
        match cmd {
            Command::Read {
                offset,
                count,
                verify,
                dump,
                vmstate,
                report: r,
            } => {
                let area = if vmstate { Area::VmState } else { Area::Disk };
                self.read(
                    dev,
                    area,
                    "read",
                    offset,
                    &[count],
                    verify,
                    dump,
                    r,
                    out,
                    err,
                )
            }
            Command::Readv {
                offset,
                lens,
                pattern,
                dump,
                report: r,
            } => {
                let total: u64 = lens.iter().sum();
                let verify = pattern.map(|p| Verify {
                    pattern: p,
                    offset: 0,
                    count: total,
                });
                self.read(
                    dev,
                    Area::Disk,
                    "readv",
                    offset,
                    &lens,
                    verify,
                    dump,
                    r,
                    out,
                    err,
                )
            }
            Command::Write {
                offset,
                count,
                source,
                target,
                fua,
                report: r,
            } => {
                if target == WriteTarget::Compressed {
                    return self.write_compressed(dev, offset, count, source, r, out, err);
                }
                if target == WriteTarget::VmState {
                    if let WriteSource::Pattern(p) = source {
                        return self.write_buf(
                            dev,
                            Area::VmState,
                            "write",
                            offset,
                            count,
                            p,
                            fua,
                            r,
                            out,
                            err,
                        );
                    }
                }
                if target != WriteTarget::Disk {
                    if let WriteSource::File(path) = &source {
                        if let Err(msg) = open_pattern_file(path)
                            .and_then(|f| fill_from_file(f, path, count.min(1)))
                        {
                            line(err, msg)?;
                            return Ok(-libc::EINVAL);
                        }
                    }
                    // Only a VM-state write from a file gets here.
                    let what = "the device has no VM state area";
                    return self.fail(out, err, "write", &DeviceError::Unsupported(what.into()));
                }
                self.write(dev, offset, count, source, fua, r, out, err)
            }
            Command::Writev {
                offset,
                lens,
                pattern,
                fua,
                report: r,
            } => {
                let total = lens.iter().sum();
                self.write_buf(
                    dev,
                    Area::Disk,
                    "writev",
                    offset,
                    total,
                    pattern,
                    fua,
                    r,
                    out,
                    err,
                )
            }
            Command::AioRead {
                offset,
                lens,
                pattern,
                dump,
                report: r,
            } => {
                let meta = AioMeta {
                    write: false,
                    offset,
                    size: lens.iter().sum(),
                    verify: pattern,
                    dump,
                    report: r,
                };
                self.submit(meta, None, false);
                Ok(0)
            }
            Command::AioWrite {
                offset,
                lens,
                pattern,
                zeroes,
                fua,
                report: r,
            } => {
                let meta = AioMeta {
                    write: true,
                    offset,
                    size: lens.iter().sum(),
                    verify: None,
                    dump: false,
                    report: r,
                };
                let how = match zeroes {
                    Some(may_unmap) => AioWrite::Zeroes(ZeroFlags {
                        may_unmap,
                        fast_only: false,
                        fua,
                    }),
                    None => AioWrite::Pattern(pattern),
                };
                self.submit(meta, Some(how), fua);
                Ok(0)
            }
            Command::AioInvalid { write } => {
                let kind = if write { "write" } else { "read" };
                line(out, format!("injecting invalid {kind} request"))?;
                Ok(0)
            }
            Command::AioFlush => {
                self.drain(out, err)?;
                Ok(0)
            }
            Command::Flush => match dev.flush() {
                Ok(()) => Ok(0),
                Err(e) => {
                    // qemu-io prints nothing on stdout for a failed flush.
                    line(err, format!("{}: flush failed: {e}", self.prog))?;
                    Ok(-error_errno(&e))
                }
            },
            Command::Discard {
                offset,
                len,
                report: r,
            } => {
                let t = Instant::now();
                let res =
                    check_range(offset, len, dev.size()).and_then(|()| dev.discard(offset, len));
                let el = t.elapsed();
                if let Err(e) = res {
                    return self.fail(out, err, "discard", &e);
                }
                if !r.quiet {
                    out.write_all(report("discard", el, offset, len, len, 1, r.csv).as_bytes())?;
                }
                Ok(0)
            }
            Command::Alloc { offset, count } => {
                let (start, mut offset, mut remaining, mut count) = (offset, offset, count, count);
                let mut sum_alloc = 0u64;
                while remaining > 0 {
                    let (allocated, num) = match is_allocated(dev, offset, remaining) {
                        Ok(r) => r,
                        Err(e) => return self.fail(out, err, "is_allocated", &e),
                    };
                    offset += num;
                    remaining -= num;
                    if allocated {
                        sum_alloc += num;
                    }
                    if num == 0 {
                        // Past the end: report the part that exists.
                        count -= remaining;
                        remaining = 0;
                    }
                }
                line(
                    out,
                    format!(
                        "{sum_alloc}/{count} bytes allocated at offset {}",
                        cvtstr(start as f64)
                    ),
                )?;
                Ok(0)
            }
            Command::Map => {
                let (mut offset, mut bytes) = (0u64, dev.size());
                while bytes > 0 {
                    let (allocated, mut num) = match is_allocated(dev, offset, bytes) {
                        Ok(r) => r,
                        Err(e) => {
                            line(
                                err,
                                format!(
                                    "{}: Failed to get allocation status: {}",
                                    self.prog,
                                    strerror(error_errno(&e))
                                ),
                            )?;
                            return Ok(-error_errno(&e));
                        }
                    };
                    if num == 0 {
                        line(err, format!("{}: Unexpected end of image", self.prog))?;
                        return Ok(-libc::EIO);
                    }
                    // Merge following runs of the same status, as qemu-io.
                    while num < bytes {
                        match is_allocated(dev, offset + num, bytes - num) {
                            Ok((a, n)) if a == allocated && n > 0 => num += n,
                            _ => break,
                        }
                    }
                    line(
                        out,
                        format!(
                            "{} (0x{num:x}) bytes {} at offset {} (0x{offset:x})",
                            cvtstr(num as f64),
                            if allocated {
                                "    allocated"
                            } else {
                                "not allocated"
                            },
                            cvtstr(offset as f64)
                        ),
                    )?;
                    offset += num;
                    bytes -= num;
                }
                Ok(0)
            }
            Command::Info => self.info(dev, out),
            Command::Truncate { size } => match dev.truncate(size) {
                Ok(()) => Ok(0),
                Err(e) => {
                    let msg = match &e {
                        DeviceError::Format(FormatError::BadOption(m))
                        | DeviceError::Format(FormatError::Unsupported(m))
                        | DeviceError::Unsupported(m) => m.clone(),
                        other => other.to_string(),
                    };
                    line(err, format!("{}: {msg}", self.prog))?;
                    Ok(-error_errno(&e))
                }
            },
            Command::Length => {
                line(out, cvtstr(dev.size() as f64))?;
                Ok(0)
            }
            Command::ZoneReport { offset, nr } => match dev.zone_report(offset, nr) {
                Ok(zones) => {
                    for z in zones.iter().take(nr as usize) {
                        line(
                            out,
                            format!(
                                "start: 0x{:x}, len 0x{:x}, cap 0x{:x}, wptr 0x{:x}, zcond:{}, [type: {}]",
                                z.start >> 9,
                                z.len >> 9,
                                z.cap >> 9,
                                z.wp >> 9,
                                z.cond.value(),
                                z.zone_type.value()
                            ),
                        )?;
                    }
                    Ok(0)
                }
                Err(e) => self.fail(out, err, "zone report", &e),
            },
            Command::ZoneMgmt { op, offset, len } => match dev.zone_mgmt(op, offset, len) {
                Ok(()) => Ok(0),
                Err(e) => self.fail(out, err, &format!("zone {}", op.verb()), &e),
            },
            Command::ZoneAppend {
                offset,
                lens,
                print_sector,
                pattern,
            } => {
                let total: u64 = lens.iter().sum();
                // qemu checks the byte range before the zone rules.
                if let Err(e) = check_range(offset, total, dev.size()) {
                    return self.fail(out, err, "zone append", &e);
                }
                let Ok(n) = usize::try_from(total) else {
                    return Ok(-libc::ENOMEM);
                };
                let buf = vec![pattern; n];
                match dev.zone_append(offset, &buf, false) {
                    Ok(at) => {
                        if print_sector {
                            line(
                                out,
                                format!("After zap done, the append sector is 0x{:x}", at >> 9),
                            )?;
                        }
                        Ok(1)
                    }
                    Err(e) => self.fail(out, err, "zone append", &e),
                }
            }
            // Handled above.
            Command::Help { .. }
            | Command::Sleep { .. }
            | Command::Quit
            | Command::Open { .. }
            | Command::Reopen { .. }
            | Command::Abort
            | Command::Sigraise { .. }
            | Command::Close => Ok(0),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        dev: &dyn BlockDevice,
        area: Area,
        what: &str,
        offset: u64,
        lens: &[u64],
        verify: Option<Verify>,
        dump: bool,
        r: ReportOpts,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> io::Result<i32> {
        let count: u64 = lens.iter().sum();
        // Check the range before allocating: a bad request costs nothing.
        // (The VM-state area lies past the disk; the device checks it, and
        // the parser bounds the length.)
        if area == Area::Disk {
            if let Err(e) = check_range(offset, count, dev.size()) {
                return self.fail(out, err, what, &e);
            }
        }
        let Ok(n) = usize::try_from(count) else {
            return Ok(-libc::ENOMEM);
        };
        let mut buf = vec![0xabu8; n];
        let t = Instant::now();
        let res = match area {
            Area::Disk => dev.read(offset, &mut buf),
            Area::VmState => dev.read_vmstate(offset, &mut buf),
        };
        let el = t.elapsed();
        if let Err(e) = res {
            return self.fail(out, err, what, &e);
        }
        let mut ret = 0;
        if let Some(v) = verify {
            let start = v.offset as usize;
            let region = buf.get(start..start + v.count as usize).unwrap_or(&[]);
            if region.iter().any(|&b| b != v.pattern) {
                line(
                    out,
                    format!(
                        "Pattern verification failed at offset {}, {} bytes",
                        offset + v.offset,
                        v.count
                    ),
                )?;
                ret = -libc::EINVAL;
            }
        }
        if r.quiet {
            return Ok(ret);
        }
        if dump {
            write_dump(out, &buf, offset)?;
        }
        out.write_all(report("read", el, offset, count, count, 1, r.csv).as_bytes())?;
        Ok(ret)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        dev: &dyn BlockDevice,
        offset: u64,
        count: u64,
        source: WriteSource,
        fua: bool,
        r: ReportOpts,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> io::Result<i32> {
        match source {
            WriteSource::Pattern(p) => {
                self.write_buf(dev, Area::Disk, "write", offset, count, p, fua, r, out, err)
            }
            WriteSource::Zeroes {
                may_unmap,
                no_fallback,
            } => {
                let flags = ZeroFlags {
                    may_unmap,
                    fast_only: no_fallback,
                    fua,
                };
                let t = Instant::now();
                let res = check_range(offset, count, dev.size())
                    .and_then(|()| dev.write_zeroes(offset, count, flags));
                let el = t.elapsed();
                self.write_done(res, el, offset, count, r, out, err)
            }
            WriteSource::File(path) => {
                // Open first (its errors come first, as in qemu-io), check
                // the range, and only then build a buffer of `count` bytes.
                let file = match open_pattern_file(&path) {
                    Ok(f) => f,
                    Err(msg) => {
                        line(err, msg)?;
                        return Ok(-libc::EINVAL);
                    }
                };
                if let Err(e) = check_range(offset, count, dev.size()) {
                    return self.fail(out, err, "write", &e);
                }
                let data = match fill_from_file(file, &path, count) {
                    Ok(d) => d,
                    Err(msg) => {
                        line(err, msg)?;
                        return Ok(-libc::EINVAL);
                    }
                };
                let t = Instant::now();
                let res = dev.write(offset, &data, fua);
                let el = t.elapsed();
                self.write_done(res, el, offset, count, r, out, err)
            }
        }
    }

    /// `write -c`: the pattern or file contents written compressed.
    #[allow(clippy::too_many_arguments)]
    fn write_compressed(
        &self,
        dev: &dyn BlockDevice,
        offset: u64,
        count: u64,
        source: WriteSource,
        r: ReportOpts,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> io::Result<i32> {
        let file = match &source {
            WriteSource::File(path) => match open_pattern_file(path) {
                Ok(f) => Some((f, path)),
                Err(msg) => {
                    line(err, msg)?;
                    return Ok(-libc::EINVAL);
                }
            },
            _ => None,
        };
        if let Err(e) = check_range(offset, count, dev.size()) {
            return self.fail(out, err, "write", &e);
        }
        let data = match (file, &source) {
            (Some((f, path)), _) => match fill_from_file(f, path, count) {
                Ok(d) => d,
                Err(msg) => {
                    line(err, msg)?;
                    return Ok(-libc::EINVAL);
                }
            },
            (None, WriteSource::Pattern(p)) => {
                let Ok(n) = usize::try_from(count) else {
                    return Ok(-libc::ENOMEM);
                };
                vec![*p; n]
            }
            // -z with -c is parsed as a plain zero write.
            (None, _) => Vec::new(),
        };
        let t = Instant::now();
        let res = dev.write_compressed(offset, &data);
        let el = t.elapsed();
        self.write_done(res, el, offset, count, r, out, err)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_buf(
        &self,
        dev: &dyn BlockDevice,
        area: Area,
        what: &str,
        offset: u64,
        count: u64,
        pattern: u8,
        fua: bool,
        r: ReportOpts,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> io::Result<i32> {
        if area == Area::Disk {
            if let Err(e) = check_range(offset, count, dev.size()) {
                return self.fail(out, err, what, &e);
            }
        }
        let Ok(n) = usize::try_from(count) else {
            return Ok(-libc::ENOMEM);
        };
        let buf = vec![pattern; n];
        let t = Instant::now();
        let res = match area {
            Area::Disk => dev.write(offset, &buf, fua),
            Area::VmState => dev.write_vmstate(offset, &buf),
        };
        let el = t.elapsed();
        match res {
            Err(e) => self.fail(out, err, what, &e),
            Ok(()) => self.write_done(Ok(()), el, offset, count, r, out, err),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write_done(
        &self,
        res: DevResult<()>,
        el: Duration,
        offset: u64,
        count: u64,
        r: ReportOpts,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> io::Result<i32> {
        if let Err(e) = res {
            return self.fail(out, err, "write", &e);
        }
        if !r.quiet {
            out.write_all(report("wrote", el, offset, count, count, 1, r.csv).as_bytes())?;
        }
        Ok(0)
    }

    /// Start a background request (a thread per request, so several are in
    /// flight at once, as with qemu-io's aio).
    fn submit(&mut self, meta: AioMeta, write: Option<AioWrite>, fua: bool) {
        let Some(dev) = self.dev.clone() else {
            return;
        };
        let (offset, size) = (meta.offset, meta.size);
        if let Err(e) = check_range(offset, size, dev.size()) {
            self.pending
                .push((meta, AioState::Done((Err(e), Vec::new(), Duration::ZERO))));
            return;
        }
        let job = move || -> AioResult {
            let t = Instant::now();
            let n = usize::try_from(size).unwrap_or(0);
            match write {
                Some(AioWrite::Zeroes(flags)) => {
                    let r = dev.write_zeroes(offset, size, flags);
                    (r, Vec::new(), t.elapsed())
                }
                Some(AioWrite::Pattern(p)) => {
                    let buf = vec![p; n];
                    let r = dev.write(offset, &buf, fua);
                    (r, Vec::new(), t.elapsed())
                }
                None => {
                    let mut buf = vec![0xabu8; n];
                    let r = dev.read(offset, &mut buf);
                    (r, buf, t.elapsed())
                }
            }
        };
        let state = match std::thread::Builder::new()
            .name("zcow-io-aio".into())
            .spawn(job)
        {
            Ok(h) => AioState::Running(h),
            Err(e) => AioState::Done((
                Err(DeviceError::Invalid(format!(
                    "cannot start aio thread: {e}"
                ))),
                Vec::new(),
                Duration::ZERO,
            )),
        };
        self.pending.push((meta, state));
    }

    /// Wait for every background request and print results in issue order.
    fn drain(&mut self, out: &mut dyn Write, err: &mut dyn Write) -> io::Result<()> {
        for (meta, state) in std::mem::take(&mut self.pending) {
            let (res, buf, el) = match state {
                AioState::Done(r) => r,
                AioState::Running(h) => h.join().unwrap_or_else(|_| {
                    (
                        Err(DeviceError::Connection("aio request panicked".into())),
                        Vec::new(),
                        Duration::ZERO,
                    )
                }),
            };
            let (op, failed) = if meta.write {
                ("wrote", "aio_write")
            } else {
                // qemu-io says "readv failed" for aio_read.
                ("read", "readv")
            };
            if let Err(e) = res {
                self.fail(out, err, failed, &e)?;
                continue;
            }
            if let Some(p) = meta.verify {
                if buf.iter().any(|&b| b != p) {
                    line(
                        out,
                        format!(
                            "Pattern verification failed at offset {}, {} bytes",
                            meta.offset, meta.size
                        ),
                    )?;
                }
            }
            if meta.report.quiet {
                continue;
            }
            if meta.dump {
                write_dump(out, &buf, meta.offset)?;
            }
            out.write_all(
                report(
                    op,
                    el,
                    meta.offset,
                    meta.size,
                    meta.size,
                    1,
                    meta.report.csv,
                )
                .as_bytes(),
            )?;
        }
        Ok(())
    }

    fn close_device(&mut self, out: &mut dyn Write, err: &mut dyn Write) -> io::Result<()> {
        self.drain(out, err)?;
        if let Some(dev) = self.dev.take() {
            // Closing flushes, as qemu's block layer does.
            if !dev.is_read_only() {
                if let Err(e) = dev.flush() {
                    line(err, format!("{}: flush on close failed: {e}", self.prog))?;
                }
            }
        }
        Ok(())
    }

    /// Let `abort` and `sigraise` end or signal this process (the zcow-io
    /// program; off by default).
    pub fn with_process_commands(mut self) -> Self {
        self.process_commands = true;
        self
    }

    /// Remember how the device given to [`Session::new`] was opened, so
    /// `reopen` can open it again with other options.
    pub fn set_origin(&mut self, path: &str, opts: OpenOptions) {
        self.origin = Some((path.to_string(), opts));
    }

    /// `reopen`: flush, then open the same image again, read-only or
    /// read-write as asked (other options are recorded).
    fn reopen(
        &mut self,
        read_only: Option<bool>,
        options: &[(String, String)],
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> io::Result<i32> {
        let Some((path, mut opts)) = self.origin.clone() else {
            line(err, "no file open, try 'help open'")?;
            return Ok(-libc::EINVAL);
        };
        if let Some(ro) = read_only {
            opts.read_only = ro;
        }
        // The raw driver's window (offset/size) is the one option reopen
        // changes; the rest are recorded.
        let mut window: Option<(u64, Option<u64>)> = None;
        for (k, v) in options {
            if k == "offset" || k == "size" {
                let Ok(n) = crate::size::parse_size(v) else {
                    line(
                        err,
                        format!("{}: Parameter '{k}' expects a size", self.prog),
                    )?;
                    return Ok(-libc::EINVAL);
                };
                let w = window.get_or_insert((0, None));
                if k == "offset" {
                    w.0 = n;
                } else {
                    w.1 = Some(n);
                }
            }
        }
        // A qcow2 image keeps its options when new ones are invalid
        // (QEMU's reopen is a transaction): check before closing.
        if let Some(dev) = &self.dev {
            if let Some(fi) = dev.format_info().filter(|f| f.name == "qcow2") {
                let qcow2_opts: Vec<(String, String)> = options
                    .iter()
                    .filter(|(k, _)| k != "offset" && k != "size")
                    .cloned()
                    .collect();
                if let Err(m) = crate::image_opts::check_qcow2_runtime_opts(
                    &qcow2_opts,
                    fi.cluster_size,
                    dev.size(),
                ) {
                    line(err, format!("{}: {m}", self.prog))?;
                    return Ok(-libc::EINVAL);
                }
            }
        }
        self.close_device(out, err)?;
        match window {
            None => self.open(&path, opts, false, err),
            Some((off, size)) => {
                match crate::open::open_raw_window(
                    std::path::Path::new(&path),
                    opts.read_only,
                    off,
                    size,
                ) {
                    Ok(d) => {
                        self.dev = Some(d);
                        self.origin = Some((path, opts));
                        Ok(0)
                    }
                    Err(e) => {
                        line(err, format!("{}: {}", self.prog, open_error_text(&e)))?;
                        Ok(-error_errno(&e))
                    }
                }
            }
        }
    }

    fn open(
        &mut self,
        path: &str,
        opts: OpenOptions,
        force_share: bool,
        err: &mut dyn Write,
    ) -> io::Result<i32> {
        if force_share && !opts.read_only {
            line(
                err,
                format!(
                    "{}: can't open device {path}: force-share=on can only be used with read-only images",
                    self.prog
                ),
            )?;
            return Ok(-libc::EINVAL);
        }
        if self.dev.is_some() {
            line(
                err,
                format!("{}: file open already, try 'help close'", self.prog),
            )?;
            return Ok(-libc::EBUSY);
        }
        crate::storage::lock::set_force_share(force_share);
        match (self.opener)(path, &opts) {
            Ok(d) => {
                self.dev = Some(d);
                self.origin = Some((path.to_string(), opts));
                Ok(0)
            }
            Err(e) => {
                line(
                    err,
                    format!(
                        "{}: can't open device {path}: {}",
                        self.prog,
                        open_error_text(&e)
                    ),
                )?;
                Ok(-error_errno(&e))
            }
        }
    }

    fn help(&self, topic: Option<String>, out: &mut dyn Write) -> io::Result<i32> {
        let Some(t) = topic else {
            out.write_all(help_all().as_bytes())?;
            return Ok(0);
        };
        let Some(spec) = find(&t) else {
            line(out, format!("command {t} not found"))?;
            return Ok(-libc::EINVAL);
        };
        line(out, usage_line(&t, spec))?;
        if let Some(h) = spec.help {
            line(out, h)?;
        }
        Ok(0)
    }

    fn info(&self, dev: &dyn BlockDevice, out: &mut dyn Write) -> io::Result<i32> {
        if let Some(fi) = dev.format_info() {
            // qemu-io's layout: driver, cluster size, VM state offset, then
            // the format-specific data as qemu-img info prints it.
            line(out, format!("format name: {}", fi.name))?;
            line(
                out,
                format!("cluster size: {}", cvtstr(fi.cluster_size as f64)),
            )?;
            line(
                out,
                format!("vm state offset: {}", cvtstr(fi.vm_state_offset as f64)),
            )?;
            if let Some(spec) = &fi.specific {
                let mut s = String::from("Format specific information:\n");
                crate::qjson::dump_human(spec, 1, &mut s);
                out.write_all(s.as_bytes())?;
            }
        } else {
            let d = dev.describe();
            if !d.is_empty() {
                line(out, format!("format name: {d}"))?;
            }
        }
        if let Some(g) = dev.zone_geometry() {
            line(out, "zone model: host-managed")?;
            line(out, format!("zone size: {}", cvtstr(g.zone_size as f64)))?;
            line(
                out,
                format!("zone capacity: {}", cvtstr(g.zone_capacity as f64)),
            )?;
            line(out, format!("nr zones: {}", g.nr_zones))?;
            line(out, format!("conventional zones: {}", g.conventional_zones))?;
            line(out, format!("max open zones: {}", g.max_open_zones))?;
            line(out, format!("max active zones: {}", g.max_active_zones))?;
            line(
                out,
                format!("max append: {}", cvtstr(g.max_append_bytes as f64)),
            )?;
        }
        Ok(0)
    }
}

/// Whether the run at `offset` is allocated, and its length (at most
/// `len`; 0 past the end, as qemu's `bdrv_is_allocated`).
fn is_allocated(dev: &dyn BlockDevice, offset: u64, len: u64) -> DevResult<(bool, u64)> {
    let size = dev.size();
    if offset >= size {
        return Ok((false, 0));
    }
    let len = len.min(size - offset);
    let ext = dev.block_status(offset, len)?;
    Ok(ext
        .first()
        .map(|e| (!e.hole, e.len.min(len)))
        .unwrap_or((false, 0)))
}

enum Dispatch {
    Ret(i32),
    Quit,
}

enum AioWrite {
    Pattern(u8),
    Zeroes(ZeroFlags),
}

/// The message of an open failure without our "invalid request:" prefix.
fn open_error_text(e: &DeviceError) -> String {
    match e {
        DeviceError::Invalid(m) => m.clone(),
        other => other.to_string(),
    }
}

fn os_error_text(path: &str, e: &io::Error) -> String {
    format!(
        "{path}: {}",
        strerror(e.raw_os_error().unwrap_or(libc::EIO))
    )
}

/// Open the file of `write -s`; Err is the message for stderr.
fn open_pattern_file(path: &str) -> Result<std::fs::File, String> {
    std::fs::File::open(path).map_err(|e| os_error_text(path, &e))
}

/// `write -s FILE`: the file's first `count` bytes, repeated to fill
/// `count` bytes. Err is the message for stderr.
fn fill_from_file(f: std::fs::File, path: &str, count: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let n = usize::try_from(count).map_err(|_| format!("{path}: file too large"))?;
    let mut data = Vec::new();
    f.take(count)
        .read_to_end(&mut data)
        .map_err(|e| os_error_text(path, &e))?;
    if data.is_empty() {
        return Err(format!("{path}: file is empty"));
    }
    let have = data.len();
    data.resize(n, 0);
    for i in have..n {
        data[i] = data[i % have];
    }
    Ok(data)
}
