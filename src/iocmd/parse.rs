//! Parsing command lines into [`Command`]s, with qemu-io's validation order
//! and messages. Pure: no device is touched, so it can be fuzzed alone.

use super::getopt::{scan, OptItem, Scanned};
use super::number::{cvtnum, parse_pattern, strtol_whole, CvtError};
use super::table::{check_arg_count, find, usage_line, CmdSpec};
use crate::zone::ZoneOp;

/// Largest single request qemu accepts (`BDRV_REQUEST_MAX_BYTES`).
pub const MAX_REQUEST_BYTES: u64 = 2_147_483_136;

/// Pattern of `write`/`zone_append` buffers when no `-P` is given.
pub const DEFAULT_WRITE_PATTERN: u8 = 0xcd;

/// One line of output produced while parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Goes to stderr (else stdout), as in qemu-io.
    pub to_stderr: bool,
    /// The text, without newline.
    pub text: String,
}

/// A rejected command line: what to print and the errno the command fails
/// with (qemu-io returns `-errno`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Lines to print, in order.
    pub messages: Vec<Message>,
    /// Positive errno.
    pub errno: i32,
}

impl ParseError {
    fn out(text: impl Into<String>, errno: i32) -> Self {
        Self {
            messages: vec![Message {
                to_stderr: false,
                text: text.into(),
            }],
            errno,
        }
    }
    fn err(text: impl Into<String>, errno: i32) -> Self {
        Self {
            messages: vec![Message {
                to_stderr: true,
                text: text.into(),
            }],
            errno,
        }
    }
    fn cvt(e: CvtError, arg: &str) -> Self {
        Self::out(e.message(arg), e.errno())
    }
}

/// Printing options shared by the I/O commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportOpts {
    /// `-q`: print no statistics.
    pub quiet: bool,
    /// `-C`: statistics as one comma-separated line.
    pub csv: bool,
}

/// `read -P` verification: `count` bytes from `offset` (relative to the
/// request) must all be `pattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verify {
    /// Expected byte.
    pub pattern: u8,
    /// Start within the data read.
    pub offset: u64,
    /// Bytes to check.
    pub count: u64,
}

/// Where the data of `write` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteSource {
    /// A buffer filled with this byte (`-P`, default 0xcd).
    Pattern(u8),
    /// A write-zeroes request (`-z`), `-u` allowing unmap, `-n` no slow path.
    Zeroes {
        /// `-u`.
        may_unmap: bool,
        /// `-n`.
        no_fallback: bool,
    },
    /// A file's contents, repeated to fill the buffer (`-s`).
    File(String),
}

/// Where `write` puts its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteTarget {
    /// The virtual disk.
    Disk,
    /// The VM state area (`-b`): no zcow device has one, so it fails.
    VmState,
    /// A compressed write (`-c`): whole clusters of a non-zoned qcow2 image.
    Compressed,
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `read [-Cqv] [-P pat [-s off] [-l len]] off len`.
    Read {
        /// Device offset.
        offset: u64,
        /// Bytes.
        count: u64,
        /// `-P` check.
        verify: Option<Verify>,
        /// `-v`.
        dump: bool,
        /// `-b`: from the VM state (unsupported, fails).
        vmstate: bool,
        /// `-q`, `-C`.
        report: ReportOpts,
    },
    /// `readv [-Cqv] [-P pat] off len [len..]`.
    Readv {
        /// Device offset.
        offset: u64,
        /// Buffer lengths (read back to back).
        lens: Vec<u64>,
        /// `-P` check over all the data.
        pattern: Option<u8>,
        /// `-v`.
        dump: bool,
        /// `-q`, `-C`.
        report: ReportOpts,
    },
    /// `write [-Cfnquz] [-P pat | -s file] off len`.
    Write {
        /// Device offset.
        offset: u64,
        /// Bytes.
        count: u64,
        /// Data source.
        source: WriteSource,
        /// `-b`, `-c` or neither.
        target: WriteTarget,
        /// `-f`: FUA.
        fua: bool,
        /// `-q`, `-C`.
        report: ReportOpts,
    },
    /// `writev [-Cfq] [-P pat] off len [len..]`.
    Writev {
        /// Device offset.
        offset: u64,
        /// Buffer lengths.
        lens: Vec<u64>,
        /// Fill byte.
        pattern: u8,
        /// `-f`: FUA.
        fua: bool,
        /// `-q`, `-C`.
        report: ReportOpts,
    },
    /// `aio_read [-Cqv] [-P pat] off len [len..]`: read in the background.
    AioRead {
        /// Device offset.
        offset: u64,
        /// Buffer lengths.
        lens: Vec<u64>,
        /// `-P` check.
        pattern: Option<u8>,
        /// `-v`.
        dump: bool,
        /// `-q`, `-C`.
        report: ReportOpts,
    },
    /// `aio_write [-Cfquz] [-P pat] off len [len..]`: write in the background.
    AioWrite {
        /// Device offset.
        offset: u64,
        /// Buffer lengths (one with `-z`).
        lens: Vec<u64>,
        /// Fill byte.
        pattern: u8,
        /// `-z`: write zeroes; the value is `-u` (may unmap).
        zeroes: Option<bool>,
        /// `-f`: FUA.
        fua: bool,
        /// `-q`, `-C`.
        report: ReportOpts,
    },
    /// `aio_read -i` / `aio_write -i`: only prints qemu-io's message.
    AioInvalid {
        /// The write variant.
        write: bool,
    },
    /// `aio_flush`: wait for background requests, print their results.
    AioFlush,
    /// `flush`.
    Flush,
    /// `discard [-Cq] off len`.
    Discard {
        /// Device offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// `-q`, `-C`.
        report: ReportOpts,
    },
    /// `alloc off [count]`: how much of a range is allocated.
    Alloc {
        /// Start.
        offset: u64,
        /// Bytes (512 when not given).
        count: u64,
    },
    /// `map`: allocated and unallocated runs of the whole device.
    Map,
    /// `info`.
    Info,
    /// `truncate [-m prealloc_mode] off`.
    Truncate {
        /// New size in bytes.
        size: u64,
    },
    /// `length`.
    Length,
    /// `zone_report off nr`.
    ZoneReport {
        /// Offset inside the first zone to report.
        offset: u64,
        /// Most zones to report.
        nr: u32,
    },
    /// `zone_open|zone_close|zone_finish|zone_reset off len`.
    ZoneMgmt {
        /// The operation.
        op: ZoneOp,
        /// Start offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `zone_append [-p] off len [len..]`.
    ZoneAppend {
        /// Zone start.
        offset: u64,
        /// Buffer lengths (appended as one request).
        lens: Vec<u64>,
        /// `-p`: print the sector where the data landed.
        print_sector: bool,
        /// `-P`: fill byte (default 0xcd, as `write`).
        pattern: u8,
    },
    /// `open [-rU] [-f fmt] [-o opts] path`.
    Open {
        /// Image path or URI (empty: `-o file.filename=` names it).
        path: String,
        /// `-r`.
        read_only: bool,
        /// `-f`.
        format: Option<String>,
        /// `-U`: take no locks that exclude others (read-only only).
        force_share: bool,
        /// `-o key=val,...`, in order.
        options: Vec<(String, String)>,
    },
    /// `reopen [-r|-w] [-c cache] [-o opts]`.
    Reopen {
        /// `-r` (Some(true)) or `-w` (Some(false)).
        read_only: Option<bool>,
        /// `-o key=val,...`, in order.
        options: Vec<(String, String)>,
    },
    /// `abort`: end the process with abort(3) (a simulated crash).
    Abort,
    /// `sigraise N`: raise signal N.
    Sigraise {
        /// Signal number.
        sig: i32,
    },
    /// `close`.
    Close,
    /// `quit`.
    Quit,
    /// `help [command]` (the name as typed).
    Help {
        /// Command asked about.
        topic: Option<String>,
    },
    /// `sleep ms`.
    Sleep {
        /// Milliseconds.
        ms: u64,
    },
}

/// Split a line into words at spaces (only spaces, as qemu-io does; empty
/// words are dropped).
pub fn breakline(line: &str) -> Vec<String> {
    line.split(' ')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

fn usage(typed: &str, spec: &CmdSpec) -> ParseError {
    ParseError::out(usage_line(typed, spec), libc::EINVAL)
}

/// Walk the scanned options; `f` handles each known one. A getopt error
/// prints its stderr message and the usage line.
fn each_opt(
    s: &Scanned,
    typed: &str,
    spec: &CmdSpec,
    mut f: impl FnMut(char, &str) -> Result<Option<Command>, ParseError>,
) -> Result<Option<Command>, ParseError> {
    for item in &s.opts {
        match item {
            OptItem::Opt(c, arg) => {
                if let Some(early) = f(*c, arg.as_deref().unwrap_or(""))? {
                    return Ok(Some(early));
                }
            }
            OptItem::Error(msg) => {
                let mut e = usage(typed, spec);
                e.messages.insert(
                    0,
                    Message {
                        to_stderr: true,
                        text: msg.clone(),
                    },
                );
                return Err(e);
            }
        }
    }
    Ok(None)
}

fn num(arg: &str) -> Result<u64, ParseError> {
    cvtnum(arg).map_err(|e| ParseError::cvt(e, arg))
}

fn pattern(arg: &str) -> Result<u8, ParseError> {
    parse_pattern(arg).map_err(|m| ParseError::out(m, libc::EINVAL))
}

/// qemu-io's `create_iovec` checks of a list of lengths.
fn iovec(args: &[String]) -> Result<Vec<u64>, ParseError> {
    let mut total: u64 = 0;
    let mut lens = Vec::with_capacity(args.len());
    for a in args {
        let len = cvtnum(a).map_err(|e| ParseError::out(e.message(a), libc::EINVAL))?;
        if len > MAX_REQUEST_BYTES {
            return Err(ParseError::out(
                format!("Argument '{a}' exceeds maximum size {MAX_REQUEST_BYTES}"),
                libc::EINVAL,
            ));
        }
        if total > MAX_REQUEST_BYTES - len {
            return Err(ParseError::out(
                format!("The total number of bytes exceed the maximum size {MAX_REQUEST_BYTES}"),
                libc::EINVAL,
            ));
        }
        total += len;
        lens.push(len);
    }
    Ok(lens)
}

fn length_arg(arg: &str, extra: &str) -> Result<u64, ParseError> {
    let n = num(arg)?;
    if n > MAX_REQUEST_BYTES {
        return Err(ParseError::out(
            format!("length cannot exceed {MAX_REQUEST_BYTES}{extra}, given {arg}"),
            libc::EINVAL,
        ));
    }
    Ok(n)
}

/// The `-b`/`-c` alignment rule: both values multiples of 512.
fn sector_aligned(offset: u64, count: u64) -> Result<(), ParseError> {
    for (v, what) in [(offset, "offset"), (count, "count")] {
        if v % 512 != 0 {
            return Err(ParseError::out(
                format!("{v} is not a sector-aligned value for '{what}'"),
                libc::EINVAL,
            ));
        }
    }
    Ok(())
}

fn parse_read(argv: &[String], spec: &CmdSpec) -> Result<Command, ParseError> {
    let typed = &argv[0];
    let s = scan(argv, "bCl:pP:qrs:v");
    let mut report = ReportOpts::default();
    let (mut dump, mut pflag, mut lflag, mut sflag) = (false, false, false, false);
    let (mut bflag, mut rflag) = (false, false);
    let (mut pat, mut poff, mut pcount) = (0u8, 0u64, 0u64);
    each_opt(&s, typed, spec, |c, arg| {
        match c {
            'C' => report.csv = true,
            'l' => {
                lflag = true;
                pcount = num(arg)?;
            }
            'P' => {
                pflag = true;
                pat = pattern(arg)?;
            }
            'q' => report.quiet = true,
            's' => {
                sflag = true;
                poff = num(arg)?;
            }
            'v' => dump = true,
            'b' => bflag = true,
            'r' => rflag = true,
            _ => {} // -p: ignored
        }
        Ok(None)
    })?;
    let [off, len] = s.operands.as_slice() else {
        return Err(usage(typed, spec));
    };
    let offset = num(off)?;
    let count = length_arg(len, "")?;
    if !pflag && (lflag || sflag) {
        return Err(usage(typed, spec));
    }
    // Signed as in qemu: -s past the end makes the length negative.
    let pc: i128 = if lflag {
        pcount as i128
    } else {
        count as i128 - poff as i128
    };
    if pc < 0 || pc + poff as i128 > count as i128 {
        return Err(ParseError::out(
            "pattern verification range exceeds end of read data",
            libc::EINVAL,
        ));
    }
    if bflag {
        sector_aligned(offset, count)?;
        if rflag {
            return Err(ParseError::out(
                "I/O buffer registration is not supported when reading from vmstate",
                libc::EINVAL,
            ));
        }
    }
    Ok(Command::Read {
        offset,
        count,
        verify: pflag.then_some(Verify {
            pattern: pat,
            offset: poff,
            count: pc as u64,
        }),
        dump,
        vmstate: bflag,
        report,
    })
}

fn parse_write(argv: &[String], spec: &CmdSpec) -> Result<Command, ParseError> {
    let typed = &argv[0];
    let s = scan(argv, "bcCfnpP:qrs:uz");
    let mut report = ReportOpts::default();
    let (mut fua, mut no_fallback, mut may_unmap, mut zflag, mut pflag, mut rflag) =
        (false, false, false, false, false, false);
    let mut pat = DEFAULT_WRITE_PATTERN;
    let mut file: Option<String> = None;
    let (mut bflag, mut cflag) = (false, false);
    each_opt(&s, typed, spec, |c, arg| {
        match c {
            'b' => bflag = true,
            'c' => cflag = true,
            'C' => report.csv = true,
            'f' => fua = true,
            'n' => no_fallback = true,
            'P' => {
                pflag = true;
                pat = pattern(arg)?;
            }
            'q' => report.quiet = true,
            'r' => rflag = true,
            's' => file = Some(arg.to_string()),
            'u' => may_unmap = true,
            'z' => zflag = true,
            _ => {} // -p: ignored
        }
        Ok(None)
    })?;
    let [off, len] = s.operands.as_slice() else {
        return Err(usage(typed, spec));
    };
    let einval = |m: &str| ParseError::out(m, libc::EINVAL);
    if bflag && zflag {
        return Err(einval("-b and -z cannot be specified at the same time"));
    }
    if fua && (bflag || cflag) {
        return Err(einval(
            "-f and -b or -c cannot be specified at the same time",
        ));
    }
    if no_fallback && !zflag {
        return Err(einval("-n requires -z to be specified"));
    }
    if may_unmap && !zflag {
        return Err(einval("-u requires -z to be specified"));
    }
    if zflag as u8 + pflag as u8 + file.is_some() as u8 > 1 {
        return Err(einval(
            "Only one of -z, -P, and -s can be specified at the same time",
        ));
    }
    let offset = num(off)?;
    let count = num(len)?;
    if count > MAX_REQUEST_BYTES && !no_fallback {
        return Err(einval(&format!(
            "length cannot exceed {MAX_REQUEST_BYTES} without -n, given {len}"
        )));
    }
    if bflag || cflag {
        sector_aligned(offset, count)?;
    }
    if zflag && rflag {
        return Err(einval(
            "cannot combine zero write with registered I/O buffer",
        ));
    }
    let target = if bflag {
        WriteTarget::VmState
    } else if cflag && !zflag {
        WriteTarget::Compressed
    } else {
        WriteTarget::Disk
    };
    let source = if zflag {
        WriteSource::Zeroes {
            may_unmap,
            no_fallback,
        }
    } else if let Some(f) = file {
        WriteSource::File(f)
    } else {
        WriteSource::Pattern(pat)
    };
    Ok(Command::Write {
        offset,
        count,
        source,
        target,
        fua,
        report,
    })
}

/// readv, writev, aio_read: options, then `off len [len..]`.
fn parse_vectored(argv: &[String], spec: &CmdSpec) -> Result<Command, ParseError> {
    let typed = &argv[0];
    let (optstring, is_write, is_aio) = match spec.name {
        "readv" => ("CP:qrv", false, false),
        "writev" => ("CfP:qr", true, false),
        _ => ("CiP:qrv", false, true),
    };
    let s = scan(argv, optstring);
    let mut report = ReportOpts::default();
    let (mut dump, mut fua) = (false, false);
    let mut pat: Option<u8> = None;
    if let Some(early) = each_opt(&s, typed, spec, |c, arg| {
        match c {
            'C' => report.csv = true,
            'f' => fua = true,
            'i' => return Ok(Some(Command::AioInvalid { write: false })),
            'P' => pat = Some(pattern(arg)?),
            'q' => report.quiet = true,
            'v' => dump = true,
            _ => {} // -r: ignored
        }
        Ok(None)
    })? {
        return Ok(early);
    }
    if s.operands.len() < 2 {
        return Err(usage(typed, spec));
    }
    let offset = num(&s.operands[0])?;
    let lens = iovec(&s.operands[1..])?;
    Ok(if is_write {
        Command::Writev {
            offset,
            lens,
            pattern: pat.unwrap_or(DEFAULT_WRITE_PATTERN),
            fua,
            report,
        }
    } else if is_aio {
        Command::AioRead {
            offset,
            lens,
            pattern: pat,
            dump,
            report,
        }
    } else {
        Command::Readv {
            offset,
            lens,
            pattern: pat,
            dump,
            report,
        }
    })
}

fn parse_aio_write(argv: &[String], spec: &CmdSpec) -> Result<Command, ParseError> {
    let typed = &argv[0];
    let s = scan(argv, "CfiP:qruz");
    let mut report = ReportOpts::default();
    let (mut fua, mut may_unmap, mut zflag, mut rflag) = (false, false, false, false);
    let mut pat = DEFAULT_WRITE_PATTERN;
    if let Some(early) = each_opt(&s, typed, spec, |c, arg| {
        match c {
            'C' => report.csv = true,
            'f' => fua = true,
            'i' => return Ok(Some(Command::AioInvalid { write: true })),
            // qemu-io never rejects -P with -z here; the pattern is unused.
            'P' => pat = pattern(arg)?,
            'q' => report.quiet = true,
            'r' => rflag = true,
            'u' => may_unmap = true,
            'z' => zflag = true,
            _ => {}
        }
        Ok(None)
    })? {
        return Ok(early);
    }
    let einval = |m: &str| ParseError::out(m, libc::EINVAL);
    if s.operands.len() < 2 {
        return Err(usage(typed, spec));
    }
    if zflag && s.operands.len() != 2 {
        return Err(einval("-z supports only a single length parameter"));
    }
    if may_unmap && !zflag {
        return Err(einval("-u requires -z to be specified"));
    }
    if zflag && rflag {
        return Err(einval(
            "cannot combine zero write with registered I/O buffer",
        ));
    }
    let offset = num(&s.operands[0])?;
    let lens = if zflag {
        vec![num(&s.operands[1])?]
    } else {
        iovec(&s.operands[1..])?
    };
    Ok(Command::AioWrite {
        offset,
        lens,
        pattern: pat,
        zeroes: zflag.then_some(may_unmap),
        fua,
        report,
    })
}

fn parse_discard(argv: &[String], spec: &CmdSpec) -> Result<Command, ParseError> {
    let typed = &argv[0];
    let s = scan(argv, "Cq");
    let mut report = ReportOpts::default();
    each_opt(&s, typed, spec, |c, _| {
        match c {
            'C' => report.csv = true,
            _ => report.quiet = true,
        }
        Ok(None)
    })?;
    let [off, len] = s.operands.as_slice() else {
        return Err(usage(typed, spec));
    };
    Ok(Command::Discard {
        offset: num(off)?,
        len: length_arg(len, "")?,
        report,
    })
}

fn prog() -> &'static str {
    crate::personality::name(crate::personality::Tool::Io)
}

fn parse_truncate(argv: &[String], spec: &CmdSpec) -> Result<Command, ParseError> {
    let typed = &argv[0];
    let s = scan(argv, "m:");
    let mut mode = String::from("off");
    each_opt(&s, typed, spec, |_, arg| {
        mode = arg.to_string();
        Ok(None)
    })?;
    let [off] = s.operands.as_slice() else {
        return Err(usage(typed, spec));
    };
    match mode.as_str() {
        "off" => {}
        // QEMU's other modes; zcow allocates nothing ahead of writes.
        "metadata" | "falloc" | "full" => {
            return Err(ParseError::err(
                format!("{}: Unsupported preallocation mode '{mode}'", prog()),
                libc::ENOTSUP,
            ))
        }
        _ => {
            return Err(ParseError::err(
                format!("{}: Invalid preallocation mode '{mode}'", prog()),
                libc::EINVAL,
            ))
        }
    }
    Ok(Command::Truncate { size: num(off)? })
}

fn parse_zone_append(argv: &[String], spec: &CmdSpec) -> Result<Command, ParseError> {
    let typed = &argv[0];
    let s = scan(argv, "pP:");
    let mut print_sector = false;
    let mut pat = DEFAULT_WRITE_PATTERN;
    each_opt(&s, typed, spec, |c, arg| {
        match c {
            'P' => pat = pattern(arg)?,
            _ => print_sector = true,
        }
        Ok(None)
    })?;
    if s.operands.len() < 2 {
        return Err(usage(typed, spec));
    }
    Ok(Command::ZoneAppend {
        offset: num(&s.operands[0])?,
        lens: iovec(&s.operands[1..])?,
        print_sector,
        pattern: pat,
    })
}

fn parse_open(argv: &[String], spec: &CmdSpec) -> Result<Command, ParseError> {
    let typed = &argv[0];
    let s = scan(argv, "rf:o:U");
    let mut read_only = false;
    let mut force_share = false;
    let mut format = None;
    let mut options = Vec::new();
    each_opt(&s, typed, spec, |c, arg| {
        match c {
            'r' => read_only = true,
            'U' => force_share = true,
            'o' => options.extend(
                crate::image_opts::split_opts(arg).map_err(|m| ParseError::err(m, libc::EINVAL))?,
            ),
            _ => format = Some(arg.to_string()),
        }
        Ok(None)
    })?;
    let path = match s.operands.as_slice() {
        [path] => path.clone(),
        [] if !options.is_empty() => String::new(),
        _ => return Err(usage(typed, spec)),
    };
    Ok(Command::Open {
        path,
        read_only,
        format,
        force_share,
        options,
    })
}

fn parse_reopen(argv: &[String], spec: &CmdSpec) -> Result<Command, ParseError> {
    let typed = &argv[0];
    let s = scan(argv, "rwc:o:");
    let mut read_only = None;
    let mut options = Vec::new();
    each_opt(&s, typed, spec, |c, arg| {
        match c {
            'r' | 'w' if read_only.is_some() => {
                return Err(ParseError::err(
                    "Only one -r/-w option may be given",
                    libc::EINVAL,
                ))
            }
            'r' => read_only = Some(true),
            'w' => read_only = Some(false),
            'o' => options.extend(
                crate::image_opts::split_opts(arg).map_err(|m| ParseError::err(m, libc::EINVAL))?,
            ),
            _ => {}
        }
        Ok(None)
    })?;
    if !s.operands.is_empty() {
        return Err(usage(typed, spec));
    }
    Ok(Command::Reopen { read_only, options })
}

/// Parse the arguments of a known command (`argv[0]` is the name as typed,
/// the argument count already checked), following qemu-io's order of
/// checks so the first message printed is the same.
pub fn parse_args(spec: &CmdSpec, argv: &[String]) -> Result<Command, ParseError> {
    if argv.is_empty() {
        return Err(ParseError::out("empty command", libc::EINVAL));
    }
    let arg = |i: usize| argv.get(i).map(String::as_str).unwrap_or("");
    let zone_mgmt = |op| -> Result<Command, ParseError> {
        Ok(Command::ZoneMgmt {
            op,
            offset: num(arg(1))?,
            len: num(arg(2))?,
        })
    };
    match spec.name {
        "read" => parse_read(argv, spec),
        "readv" | "writev" | "aio_read" => parse_vectored(argv, spec),
        "write" => parse_write(argv, spec),
        "aio_write" => parse_aio_write(argv, spec),
        "aio_flush" => Ok(Command::AioFlush),
        "flush" => Ok(Command::Flush),
        "discard" => parse_discard(argv, spec),
        "alloc" => {
            let offset = num(arg(1))?;
            let count = if argv.len() == 3 { num(arg(2))? } else { 512 };
            Ok(Command::Alloc { offset, count })
        }
        "map" => Ok(Command::Map),
        "info" => Ok(Command::Info),
        "length" => Ok(Command::Length),
        "truncate" => parse_truncate(argv, spec),
        "zone_report" => {
            let offset = num(arg(1))?;
            let n = num(arg(2))?;
            let nr = u32::try_from(n).map_err(|_| {
                ParseError::out("Number of zones must be less than 2^32", libc::ERANGE)
            })?;
            Ok(Command::ZoneReport { offset, nr })
        }
        "zone_open" => zone_mgmt(ZoneOp::Open),
        "zone_close" => zone_mgmt(ZoneOp::Close),
        "zone_finish" => zone_mgmt(ZoneOp::Finish),
        "zone_reset" => zone_mgmt(ZoneOp::Reset),
        "zone_append" => parse_zone_append(argv, spec),
        "open" => parse_open(argv, spec),
        "close" => Ok(Command::Close),
        "reopen" => parse_reopen(argv, spec),
        "abort" => Ok(Command::Abort),
        "sigraise" => match strtol_whole(arg(1)) {
            Some(n) if (1..=64).contains(&n) => Ok(Command::Sigraise { sig: n as i32 }),
            _ => Err(ParseError::out(
                format!(
                    "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {}",
                    arg(1)
                ),
                libc::EINVAL,
            )),
        },
        "quit" => Ok(Command::Quit),
        "help" => Ok(Command::Help {
            topic: argv.get(1).cloned(),
        }),
        "sleep" => match strtol_whole(arg(1)) {
            Some(ms) if ms >= 0 => Ok(Command::Sleep { ms: ms as u64 }),
            _ => Err(ParseError::out(
                format!("{} is not a valid number", arg(1)),
                libc::EINVAL,
            )),
        },
        other => Err(ParseError::err(
            format!("command \"{other}\" not found"),
            libc::EINVAL,
        )),
    }
}

/// The message for an unknown command (stderr).
pub fn not_found(name: &str) -> ParseError {
    ParseError::err(format!("command \"{name}\" not found"), libc::EINVAL)
}

/// Parse a whole line without a device: `Ok(None)` for a blank line. The
/// state checks a session adds (open file, write permission) are skipped.
/// This is the fuzzing entry point: it must never panic.
pub fn parse_line(line: &str) -> Result<Option<Command>, ParseError> {
    let argv = breakline(line);
    let Some(name) = argv.first() else {
        return Ok(None);
    };
    let spec = find(name).ok_or_else(|| not_found(name))?;
    if let Some(msg) = check_arg_count(name, spec, argv.len() - 1) {
        return Err(ParseError::err(msg, libc::EINVAL));
    }
    parse_args(spec, &argv).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse_line(line).unwrap().unwrap()
    }

    fn msg(line: &str) -> Vec<(bool, String)> {
        parse_line(line)
            .unwrap_err()
            .messages
            .into_iter()
            .map(|m| (m.to_stderr, m.text))
            .collect()
    }

    #[test]
    fn read_variants() {
        assert_eq!(
            ok("read -P 0xab -v 512 1k"),
            Command::Read {
                offset: 512,
                count: 1024,
                verify: Some(Verify {
                    pattern: 0xab,
                    offset: 0,
                    count: 1024
                }),
                dump: true,
                vmstate: false,
                report: ReportOpts::default(),
            }
        );
        assert_eq!(
            msg("read -P 0 -s 1 -l 4 0 2"),
            vec![(
                false,
                "pattern verification range exceeds end of read data".into()
            )]
        );
        assert_eq!(
            msg("read 0 3G"),
            vec![(false, "length cannot exceed 2147483136, given 3G".into())]
        );
        let m = msg("r -z 0 1");
        assert_eq!(m[0], (true, "r: invalid option -- 'z'".into()));
        assert!(m[1].1.starts_with("r [-abCqrv]"));
    }

    #[test]
    fn zone_commands() {
        assert_eq!(ok("zrp 0 4"), Command::ZoneReport { offset: 0, nr: 4 });
        assert_eq!(
            ok("zap -p 1M 4k 4k"),
            Command::ZoneAppend {
                offset: 1 << 20,
                lens: vec![4096, 4096],
                print_sector: true,
                pattern: DEFAULT_WRITE_PATTERN,
            }
        );
        assert_eq!(
            ok("zap -P 0x5a 1M 4k"),
            Command::ZoneAppend {
                offset: 1 << 20,
                lens: vec![4096],
                print_sector: false,
                pattern: 0x5a,
            }
        );
        assert_eq!(
            msg("zrp 0 4294967296"),
            vec![(false, "Number of zones must be less than 2^32".into())]
        );
        assert_eq!(
            msg("zo -1 1"),
            vec![(false, "Parsing error: argument too large -- -1".into())]
        );
        assert_eq!(
            msg("zrs 0"),
            vec![(
                true,
                "bad argument count 1 to zrs, expected 2 arguments".into()
            )]
        );
    }

    #[test]
    fn misc() {
        assert_eq!(parse_line("   ").unwrap(), None);
        assert_eq!(
            msg("bogus 1"),
            vec![(true, "command \"bogus\" not found".into())]
        );
        assert_eq!(
            msg("write -u 0 4k"),
            vec![(false, "-u requires -z to be specified".into())]
        );
        assert_eq!(ok("aio_write -i -x"), Command::AioInvalid { write: true });
        assert_eq!(
            msg("sleep x"),
            vec![(false, "x is not a valid number".into())]
        );
    }
}
