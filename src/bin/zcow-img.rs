//! zcow-img: create, inspect, check and repair zcow/qcow2 images.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
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

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an image: create [-f qcow2] [-o opt=val,...] [-b BACKING [-F FMT]] FILE [SIZE]
    Create {
        /// Image format (only qcow2).
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
        /// Image format (only qcow2).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Output format.
        #[arg(long = "output", value_enum, default_value = "human")]
        output: Output,
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
        /// Output format.
        #[arg(long = "output", value_enum, default_value = "human")]
        output: Output,
        /// Image file.
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
            if format != "qcow2" {
                bail!("Unknown file format '{format}' (zcow-img creates qcow2 only)");
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
                            .with_context(|| {
                                format!("Could not open backing file '{}'", bp.display())
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
            zcow::format::create::validate(&o)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if !quiet {
                println!(
                    "{}",
                    img::create::formatting_line(&file.to_string_lossy(), &o)
                );
            }
            let st = FileStorage::create(&file).with_context(|| {
                format!("{}: Could not create '{}'", file.display(), file.display())
            })?;
            create(&st, &o).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            Ok(0)
        }
        Cmd::Info {
            format,
            output,
            file,
        } => {
            if let Some(f) = format {
                if f != "qcow2" {
                    bail!("zcow-img info supports only qcow2 images (got -f {f})");
                }
            }
            let name = file.to_string_lossy().into_owned();
            let info = img::info::image_info(&file, &name)
                .map_err(|e| anyhow::anyhow!("Could not open '{name}': {e}"))?;
            match output {
                Output::Human => print!("{}", info.human()),
                Output::Json => print!("{}", info.json()),
            }
            Ok(0)
        }
        Cmd::Zone { cmd } => match cmd {
            ZoneCmd::Report {
                offset,
                count,
                output,
                file,
            } => {
                let off = zcow::size::parse_size(&offset).map_err(anyhow::Error::msg)?;
                let (_, zones) = img::zone::report(&file, off, count)
                    .map_err(|e| anyhow::anyhow!("Could not open '{}': {e}", file.display()))?;
                match output {
                    Output::Human => print!("{}", img::zone::render_human(&zones)),
                    Output::Json => print!("{}", img::zone::render_json(&zones)),
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("zcow-img: {e:#}");
            ExitCode::from(1)
        }
    }
}
