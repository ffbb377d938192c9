//! zcow-img: create, inspect, check and repair zcow/qcow2 images.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use zcow::check::{OutputFormat, RepairMode, RepairOptions};
use zcow::format::create::create;
use zcow::img;
use zcow::storage::FileStorage;

#[derive(Parser)]
#[command(
    name = "zcow-img",
    version,
    about = "Create, inspect, check and repair zoned qcow2 images (qemu-img compatible syntax)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// A usage error reported the way qemu-img does: message, then a hint
/// line, exit 1.
#[derive(Debug)]
struct Usage {
    cmd: &'static str,
    msg: String,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\nTry '{} {} --help' for more info",
            self.msg,
            zcow::personality::name(zcow::personality::Tool::Img),
            self.cmd
        )
    }
}

impl std::error::Error for Usage {}

fn output_arg(cmd: &'static str, s: &str) -> Result<OutputFormat> {
    OutputFormat::from_arg(s).map_err(|msg| Usage { cmd, msg }.into())
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an image: create [-f qcow2] [-o opt=val,...] [-b BACKING [-F FMT]] FILE [SIZE]
    Create {
        /// Image format (qcow2 or raw).
        #[arg(short = 'f', default_value = "qcow2")]
        format: String,
        /// Options: cluster_size, compat, refcount_bits, lazy_refcounts,
        /// preallocation, compression_type, extended_l2, backing_file,
        /// backing_fmt, zone.mode, zone.size, zone.capacity,
        /// zone.conventional_zones, zone.max_open_zones,
        /// zone.max_active_zones, zone.max_append_bytes.
        #[arg(short = 'o')]
        options: Vec<String>,
        /// Backing file.
        #[arg(short = 'b')]
        backing: Option<String>,
        /// Backing file format.
        #[arg(short = 'F')]
        backing_fmt: Option<String>,
        /// Quiet: no Formatting line.
        #[arg(short = 'q')]
        quiet: bool,
        /// Image file.
        file: PathBuf,
        /// Virtual size, with optional suffix k, M, G, T, P, E.
        size: Option<String>,
    },
    /// Show information about an image.
    Info {
        /// Image format (qcow2 or raw; probed when absent).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Show every image of the backing chain.
        #[arg(long = "backing-chain")]
        backing_chain: bool,
        /// Output format: human or json.
        #[arg(long = "output", default_value = "human")]
        output: String,
        /// Image file.
        file: PathBuf,
    },
    /// Check an image for consistency (qemu-img check compatible), and
    /// optionally repair it: check [-f qcow2] [-r leaks|all] [--output human|json] [-q] [-p] FILE
    Check {
        /// Image format (qcow2; raw images cannot be checked).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Repair: leaks, or all.
        #[arg(short = 'r', long = "repair")]
        repair: Option<String>,
        /// Output format: human or json.
        #[arg(long = "output", default_value = "human")]
        output: String,
        /// Quiet: print nothing on stdout.
        #[arg(short = 'q')]
        quiet: bool,
        /// Show a progress bar (on a terminal only).
        #[arg(short = 'p')]
        progress: bool,
        /// Image file.
        file: String,
    },
    /// Repair everything that can be derived (check -r all plus the zoned
    /// repairs), printing what changes.
    Repair {
        /// Print what would change, change nothing.
        #[arg(long, conflicts_with = "undo")]
        dry_run: bool,
        /// Save every metadata cluster the repair rewrites to FILE, so the
        /// repair can be undone with --undo.
        #[arg(long, value_name = "FILE", conflicts_with = "undo")]
        backup: Option<PathBuf>,
        /// Undo an earlier repair from its backup FILE.
        #[arg(long, value_name = "FILE")]
        undo: Option<PathBuf>,
        /// Output format: human or json.
        #[arg(long = "output", default_value = "human")]
        output: String,
        /// Image file.
        file: PathBuf,
    },
    /// Zone commands.
    Zone {
        #[command(subcommand)]
        cmd: ZoneCmd,
    },
}

#[derive(Subcommand)]
enum ZoneCmd {
    /// Report zones (the persistent state, as after a power cycle).
    Report {
        /// Start at the zone holding this byte offset.
        #[arg(long, default_value = "0")]
        offset: String,
        /// At most this many zones.
        #[arg(long)]
        count: Option<u32>,
        /// Output format: human or json.
        #[arg(long = "output", default_value = "human")]
        output: String,
        /// Image file.
        file: PathBuf,
    },
    /// Draw every zone, coloured by condition and filled to its write
    /// pointer: an SVG picture (default) or text for a terminal.
    Map {
        /// svg or text.
        #[arg(long = "output", default_value = "svg")]
        output: String,
        /// Write the map to FILE instead of standard output.
        #[arg(short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
        /// Cells per line of the text map.
        #[arg(long, default_value = "64")]
        width: usize,
        /// Image format (qcow2); probed when absent.
        #[arg(short = 'f')]
        format: Option<String>,
        /// Image file or nbd:// URI of a zoned export.
        file: PathBuf,
    },
    /// Set or clear a persistent fault condition: readonly, offline, clear.
    SetCond {
        /// Image file.
        file: PathBuf,
        /// Zone index.
        zone: u32,
        /// readonly, offline or clear.
        cond: String,
    },
}

fn run(cli: Cli) -> Result<u8> {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    match cli.cmd {
        Cmd::Create {
            format,
            mut options,
            backing,
            backing_fmt,
            quiet,
            file,
            size,
        } => {
            if format == "raw" {
                return create_raw(&file, &options, size.as_deref(), quiet);
            }
            if format != "qcow2" {
                bail!("Unknown file format '{format}' (zcow-img creates qcow2 and raw)");
            }
            if let Some(b) = backing {
                options.push(format!("backing_file={}", b.replace(',', ",,")));
            }
            if let Some(f) = backing_fmt {
                options.push(format!("backing_fmt={f}"));
            }
            let size = match size {
                Some(s) => Some(
                    zcow::size::parse_size(&s)
                        .map_err(|_| anyhow::anyhow!("Invalid image size specified: '{s}'."))?,
                ),
                None => None,
            };
            let mut o = img::create::parse_options(&options, size).map_err(anyhow::Error::msg)?;
            if size.is_none() && o.size == 0 {
                if let Some(b) = &o.backing_file {
                    let bp = file.parent().map(|d| d.join(b)).unwrap_or_else(|| b.into());
                    let bi = zcow::format::Qcow2::open_path(
                        &bp,
                        &zcow::format::OpenOptions {
                            read_only: true,
                            backing: zcow::format::BackingPolicy::Skip,
                            ..Default::default()
                        },
                    );
                    o.size = match bi {
                        Ok(i) => i.size(),
                        Err(_) => std::fs::metadata(&bp)
                            .map_err(|e| {
                                // qemu-img's two lines for a missing backing file.
                                anyhow::anyhow!(
                                    "{}: Could not open '{}': {}\nCould not open backing image.",
                                    file.display(),
                                    bp.display(),
                                    zcow::iocmd::format::strerror(
                                        e.raw_os_error().unwrap_or(libc::EIO)
                                    )
                                )
                            })?
                            .len(),
                    };
                } else {
                    bail!("Image creation needs a size parameter");
                }
            }
            if o.backing_file.is_some() && o.backing_fmt.is_none() {
                bail!(
                    "{}: Backing file specified without backing format",
                    file.display()
                );
            }
            // qemu-img prints the size as given but rounds it up to whole
            // 512-byte sectors (1234 -> 1536).
            let shown = o.clone();
            o.size = o.size.next_multiple_of(512);
            // qemu-img prints the Formatting line before the driver
            // validates its options.
            if !quiet {
                println!(
                    "{}",
                    img::create::formatting_line(&file.to_string_lossy(), &shown)
                );
            }
            zcow::format::create::validate(&o)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let st = FileStorage::create(&file).with_context(|| {
                format!("{}: Could not create '{}'", file.display(), file.display())
            })?;
            create(&st, &o).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            Ok(0)
        }
        Cmd::Info {
            format,
            output,
            backing_chain,
            file,
        } => {
            let output = output_arg("info", &output)?;
            let name = file.to_string_lossy().into_owned();
            let open_err = |e| anyhow::anyhow!("Could not open '{name}': {e}");
            if backing_chain {
                let chain =
                    img::info::chain_info(&file, &name, format.as_deref()).map_err(open_err)?;
                print!(
                    "{}",
                    img::info::render_chain(&chain, output == OutputFormat::Json)
                );
                return Ok(0);
            }
            let info =
                img::info::image_info_probe(&file, &name, format.as_deref()).map_err(open_err)?;
            match output {
                OutputFormat::Human => print!("{}", info.human()),
                OutputFormat::Json => print!("{}", info.json()),
            }
            Ok(0)
        }
        Cmd::Check {
            format,
            repair,
            output,
            quiet,
            progress,
            file,
        } => {
            let repair = match repair {
                Some(r) => {
                    Some(RepairMode::from_arg(&r).map_err(|msg| Usage { cmd: "check", msg })?)
                }
                None => None,
            };
            let opts = zcow::check::CheckOptions {
                repair,
                output: output_arg("check", &output)?,
                quiet,
                progress,
                format,
                display_name: Some(file.clone()),
            };
            let code = zcow::check::run_check(
                std::path::Path::new(&file),
                &opts,
                &mut stdout,
                &mut stderr,
            )?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Cmd::Repair {
            dry_run,
            backup,
            undo,
            output,
            file,
        } => {
            if let Some(b) = undo {
                zcow::check::undo_repair(&file, &b).with_context(|| {
                    format!("undo of the repair of '{}' failed", file.display())
                })?;
                println!("Restored '{}' from '{}'.", file.display(), b.display());
                return Ok(0);
            }
            let opts = RepairOptions {
                dry_run,
                backup,
                output: output_arg("repair", &output)?,
            };
            let code = zcow::check::run_repair(&file, &opts, &mut stdout, &mut stderr)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Cmd::Zone { cmd } => match cmd {
            ZoneCmd::Report {
                offset,
                count,
                output,
                file,
            } => {
                // blkzone's layout is zone report's own third format.
                let blkzone = output == "blkzone";
                let output = if blkzone {
                    OutputFormat::Human
                } else {
                    output_arg("zone report", &output)?
                };
                let off = zcow::size::parse_size(&offset).map_err(anyhow::Error::msg)?;
                let (_, zones) = img::zone::report(&file, off, count)
                    .map_err(|e| anyhow::anyhow!("Could not open '{}': {e}", file.display()))?;
                let text = match output {
                    _ if blkzone => img::zone::render_blkzone(&zones),
                    OutputFormat::Human => img::zone::render_human(&zones),
                    OutputFormat::Json => img::zone::render_json(&zones),
                };
                stdout.write_all(text.as_bytes())?;
                Ok(0)
            }
            ZoneCmd::Map {
                output,
                out,
                width,
                format,
                file,
            } => {
                let name = file.display().to_string();
                let dev = zcow::open::open_device(
                    &file,
                    &zcow::open::OpenOptions {
                        format,
                        read_only: true,
                        allow_backing: false,
                    },
                )
                .map_err(|e| match e {
                    // open_device already says "Could not open '…': why".
                    zcow::device::DeviceError::Invalid(m) => anyhow::anyhow!(m),
                    e => anyhow::anyhow!("Could not open '{name}': {e}"),
                })?;
                let map = img::zonemap::from_device(dev.as_ref(), &name)
                    .with_context(|| format!("zone map of '{name}'"))?;
                let text = match output.as_str() {
                    "svg" => map.to_svg(),
                    "text" => map.to_text(width),
                    _ => bail!("zone map: --output must be svg or text, not '{output}'"),
                };
                match out {
                    Some(path) => std::fs::write(&path, text)
                        .with_context(|| format!("writing '{}'", path.display()))?,
                    None => stdout.write_all(text.as_bytes())?,
                }
                Ok(0)
            }
            ZoneCmd::SetCond { file, zone, cond } => {
                let c = match cond.as_str() {
                    "readonly" | "read-only" | "ro" => img::zone::FaultCond::ReadOnly,
                    "offline" => img::zone::FaultCond::Offline,
                    "clear" => img::zone::FaultCond::Clear,
                    _ => bail!("unknown condition '{cond}' (use readonly, offline or clear)"),
                };
                let now = img::zone::set_cond(&file, zone, c)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                println!("zone {zone}: {}", now.name());
                Ok(0)
            }
        },
    }
}

/// `create -f raw`: a sparse file of the size rounded up to 512 bytes,
/// with qemu-img's Formatting line.
fn create_raw(
    file: &std::path::Path,
    options: &[String],
    size: Option<&str>,
    quiet: bool,
) -> Result<u8> {
    let mut bytes = None;
    for o in options.iter().flat_map(|o| o.split(',')) {
        match o.split_once('=') {
            Some(("size", v)) => bytes = Some(v.to_string()),
            Some(("preallocation", "off")) => {}
            _ => bail!("Invalid parameter '{o}'"),
        }
    }
    let s = size
        .map(str::to_string)
        .or(bytes)
        .ok_or_else(|| anyhow::anyhow!("Image creation needs a size parameter"))?;
    let n = zcow::size::parse_size(&s)
        .map_err(|_| anyhow::anyhow!("Invalid image size specified: '{s}'."))?;
    if !quiet {
        println!("Formatting '{}', fmt=raw size={n}", file.display());
    }
    let f = std::fs::File::create(file)
        .with_context(|| format!("{}: Could not create '{}'", file.display(), file.display()))?;
    f.set_len(n.next_multiple_of(512))
        .with_context(|| format!("{}: Could not resize file", file.display()))?;
    Ok(0)
}

fn main() -> ExitCode {
    if zcow::cli_docs::generate_if_asked(<Cli as clap::CommandFactory>::command) {
        return ExitCode::SUCCESS;
    }
    zcow::personality::init();
    let prog = zcow::personality::name(zcow::personality::Tool::Img);
    let matches = <Cli as clap::CommandFactory>::command()
        .name(prog)
        .bin_name(prog)
        .get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{prog}: {e:#}");
            ExitCode::from(1)
        }
    }
}
