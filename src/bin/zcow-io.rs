//! zcow-io: qemu-io's command language on zcow devices (raw, qcow2, zoned
//! qcow2, NBD). `zcow-io [-f FMT] [-r] [-c CMD]... [FILE]`; without `-c` it
//! reads commands from stdin after a `zcow-io> ` prompt.

use anyhow::Result;
use clap::Parser;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use zcow::iocmd::{Session, Status};
use zcow::open::{open_device, OpenOptions};
use zcow::personality::{self, Tool};

/// Exercise a zcow device with qemu-io's commands.
#[derive(Parser, Debug)]
#[command(
    name = "zcow-io",
    version,
    about = "zcow disk exerciser (qemu-io's command language)",
    after_help = "See 'zcow-io -c help' for information on available commands."
)]
struct Cli {
    /// Execute a command (repeatable; commands run in order)
    #[arg(
        short = 'c',
        long = "cmd",
        value_name = "STRING",
        allow_hyphen_values = true
    )]
    cmd: Vec<String>,
    /// Image format (qcow2 or raw; probed when absent)
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    format: Option<String>,
    /// Open the image read-only
    #[arg(short = 'r', long = "read-only")]
    read_only: bool,
    /// Open the image with no locks that exclude others (read-only only), as
    /// qemu-io -U: other processes may change it while it is read
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Disable the host cache, short for -t none (accepted and recorded:
    /// zcow has one cache mode)
    #[arg(short = 'n', long = "nocache")]
    nocache: bool,
    /// Cache mode: none, writeback, writethrough, directsync, unsafe
    /// (validated, then recorded: zcow writes through its own page-cache
    /// path and flushes on flush/close in every mode)
    #[arg(short = 't', long = "cache", value_name = "MODE")]
    cache: Option<String>,
    /// AIO mode: threads, native, io_uring (validated, then recorded: zcow
    /// uses threads)
    #[arg(short = 'i', long = "aio", value_name = "MODE")]
    aio: Option<String>,
    /// Kernel AIO, short for -i native (accepted and recorded)
    #[arg(short = 'k', long = "native-aio")]
    native_aio: bool,
    /// Snapshot mode: the image is opened read-only and writes are kept in
    /// memory, discarded at exit
    #[arg(short = 's', long = "snapshot")]
    snapshot: bool,
    /// Copy-on-read: data read from the backing chain is written into the
    /// image (whole clusters; all-zero data is left unallocated)
    #[arg(short = 'C', long = "copy-on-read")]
    copy_on_read: bool,
    /// Misalign buffers for O_DIRECT (accepted and recorded: no effect)
    #[arg(short = 'm', long = "misalign")]
    misalign: bool,
    /// Discard mode: ignore/off or unmap/on (validated, then recorded)
    #[arg(short = 'd', long = "discard", value_name = "MODE")]
    discard: Option<String>,
    /// Treat FILE as an option string: driver=FMT,file.filename=PATH[,...]
    #[arg(long = "image-opts")]
    image_opts: bool,
    /// Object definition (accepted and ignored: zcow has no secrets or
    /// throttle groups)
    #[arg(long = "object", value_name = "OBJECTDEF")]
    object: Vec<String>,
    /// Image file or nbd:// URI
    file: Option<String>,
}

fn main() -> ExitCode {
    if zcow::cli_docs::generate_if_asked(<Cli as clap::CommandFactory>::command) {
        return ExitCode::SUCCESS;
    }
    personality::init();
    let prog_now = personality::name(Tool::Io);
    let cmd = <Cli as clap::CommandFactory>::command()
        .name(prog_now)
        .bin_name(prog_now);
    let parsed = cmd
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            // Help and version succeed; usage errors exit 1 as in qemu-io.
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`zcow-io ... | head -1`): exit quietly, as a
        // C tool killed by SIGPIPE looks to the shell.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<io::Error>()
                    .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::from(141)
        }
        Err(e) => {
            // Not eprintln!: it panics when stderr is closed.
            let _ = writeln!(io::stderr(), "{prog_now}: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Validate the options QEMU gives a meaning zcow records without acting
/// on; the error is qemu-io's line.
fn check_modes(cli: &Cli) -> std::result::Result<(), String> {
    if let Some(c) = &cli.cache {
        if ![
            "none",
            "off",
            "writeback",
            "writethrough",
            "directsync",
            "unsafe",
        ]
        .contains(&c.as_str())
        {
            return Err(format!("Invalid cache option: {c}"));
        }
    }
    if let Some(a) = &cli.aio {
        if !["threads", "native", "io_uring"].contains(&a.as_str()) {
            return Err(format!("Invalid aio option: {a}"));
        }
    }
    if let Some(d) = &cli.discard {
        if !["ignore", "off", "unmap", "on"].contains(&d.as_str()) {
            return Err("Invalid discard option".to_string());
        }
    }
    let _ = (cli.nocache, cli.native_aio, cli.misalign, &cli.object);
    Ok(())
}

fn run(cli: Cli) -> Result<u8> {
    let prog = personality::name(Tool::Io);
    if let Err(m) = check_modes(&cli) {
        eprintln!("{prog}: {m}");
        return Ok(1);
    }
    let mut session = Session::new(None).with_process_commands();
    let stdout = io::stdout();
    // Line-buffered on a terminal so stdout and stderr lines interleave in
    // order; fully buffered (flushed after each command) otherwise.
    let mut out: Box<dyn Write> = if stdout.is_terminal() {
        Box::new(io::LineWriter::new(stdout.lock()))
    } else {
        Box::new(io::BufWriter::new(stdout.lock()))
    };
    let mut err = io::stderr();

    if let Some(given) = &cli.file {
        if cli.force_share && !cli.read_only {
            writeln!(
                err,
                "{prog}: can't open device {given}: force-share=on can only be used with read-only images"
            )?;
            return Ok(1);
        }
        zcow::storage::lock::set_force_share(cli.force_share);
        let mut opts = OpenOptions {
            format: cli.format.clone(),
            read_only: cli.read_only,
            allow_backing: true,
        };
        let named = if cli.image_opts {
            if cli.format.is_some() {
                writeln!(
                    err,
                    "{prog}: --image-opts and --format are mutually exclusive"
                )?;
                return Ok(1);
            }
            Some(zcow::image_opts::parse_image_opts(given))
        } else {
            zcow::image_opts::parse_json_filename(given)
        };
        let mut window = None;
        let file = match named {
            None => zcow::image_opts::file_protocol_path(given),
            Some(Ok(o)) => {
                if o.offset.is_some() || o.size.is_some() {
                    window = Some((o.offset.unwrap_or(0), o.size));
                }
                if o.driver.is_some() {
                    opts.format = o.driver.clone();
                }
                opts.read_only |= o.read_only;
                o.filename
            }
            Some(Err(m)) => {
                writeln!(err, "{prog}: {m}")?;
                return Ok(1);
            }
        };
        let file = &file;
        if cli.snapshot {
            opts.read_only = true;
        }
        let opened = match window {
            Some((off, size)) => {
                zcow::open::open_raw_window(Path::new(file), opts.read_only, off, size)
            }
            None => open_device(Path::new(file), &opts),
        }
        .and_then(|d| {
            if cli.snapshot {
                Ok(std::sync::Arc::new(zcow::overlay::MemOverlay::new(d)?) as _)
            } else {
                Ok(d)
            }
        })
        .and_then(|d| {
            if cli.copy_on_read {
                Ok(std::sync::Arc::new(zcow::copy_on_read::CopyOnRead::new(d)?) as _)
            } else {
                Ok(d)
            }
        });
        match opened {
            Ok(dev) => {
                session = Session::new(Some(dev)).with_process_commands();
                session.set_origin(file, opts);
            }
            Err(e) => {
                let msg = match &e {
                    zcow::device::DeviceError::Invalid(m) => m.clone(),
                    other => other.to_string(),
                };
                writeln!(err, "{prog}: can't open device {given}: {msg}")?;
                return Ok(1);
            }
        }
    }

    if !cli.cmd.is_empty() {
        for c in &cli.cmd {
            let status = session.run_command(c, &mut out, &mut err)?;
            out.flush()?;
            if status == Status::Quit {
                break;
            }
        }
    } else {
        interactive(&mut session, &mut out, &mut err)?;
    }
    session.finish(&mut out, &mut err)?;
    out.flush()?;
    Ok(session.exit_code() as u8)
}

/// Prompt, read a line, run it; until `quit` or end of input.
fn interactive(session: &mut Session, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let stdin = io::stdin();
    let tty = stdin.is_terminal();
    let mut input = stdin.lock();
    let mut buf = Vec::new();
    loop {
        write!(out, "{}> ", personality::name(Tool::Io))?;
        out.flush()?;
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            if tty {
                writeln!(out)?;
            }
            return Ok(());
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let line = String::from_utf8_lossy(&buf);
        let status = session.run_command(&line, out, err)?;
        out.flush()?;
        if status == Status::Quit {
            return Ok(());
        }
    }
}
