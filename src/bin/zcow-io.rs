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
    #[arg(short = 'c', long = "cmd", value_name = "STRING")]
    cmd: Vec<String>,
    /// Image format (qcow2 or raw; probed when absent)
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    format: Option<String>,
    /// Open the image read-only
    #[arg(short = 'r', long = "read-only")]
    read_only: bool,
    /// Image file or nbd:// URI
    file: Option<String>,
}

fn main() -> ExitCode {
    if zcow::cli_docs::generate_if_asked(<Cli as clap::CommandFactory>::command) {
        return ExitCode::SUCCESS;
    }
    let cli = match Cli::try_parse() {
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
        Err(e) => {
            // Output errors (closed pipe): nothing sensible left to print to.
            eprintln!("zcow-io: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    let mut session = Session::new(None);
    let stdout = io::stdout();
    // Line-buffered on a terminal so stdout and stderr lines interleave in
    // order; fully buffered (flushed after each command) otherwise.
    let mut out: Box<dyn Write> = if stdout.is_terminal() {
        Box::new(io::LineWriter::new(stdout.lock()))
    } else {
        Box::new(io::BufWriter::new(stdout.lock()))
    };
    let mut err = io::stderr();

    if let Some(file) = &cli.file {
        let opts = OpenOptions {
            format: cli.format.clone(),
            read_only: cli.read_only,
            allow_backing: true,
        };
        match open_device(Path::new(file), &opts) {
            Ok(dev) => session = Session::new(Some(dev)),
            Err(e) => {
                let msg = match &e {
                    zcow::device::DeviceError::Invalid(m) => m.clone(),
                    other => other.to_string(),
                };
                writeln!(err, "zcow-io: can't open device {file}: {msg}")?;
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
        write!(out, "zcow-io> ")?;
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
