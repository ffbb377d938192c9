//! zcow-img: create, inspect, check and repair zcow/qcow2 images.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use zcow::check::{OutputFormat, RepairMode, RepairOptions};
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

/// The file and format an `--image-opts` string or a `json:` file name
/// names (other keys are recorded; zcow-img acts on none of them).
fn named_image(given: &str, image_opts: bool, format: &mut Option<String>) -> Result<String> {
    let parsed = if image_opts {
        if format.is_some() {
            bail!("--image-opts and --format are mutually exclusive");
        }
        Some(zcow::image_opts::parse_image_opts(given))
    } else {
        zcow::image_opts::parse_json_filename(given)
    };
    match parsed {
        None => Ok(zcow::image_opts::file_protocol_path(given)),
        Some(Err(m)) => bail!("Could not open '{given}': {m}"),
        Some(Ok(o)) => {
            if o.offset.is_some() || o.size.is_some() {
                bail!("Could not open '{given}': the raw driver's offset and size options are supported by zcow-io only");
            }
            if format.is_none() {
                *format = o.driver;
            }
            Ok(o.filename)
        }
    }
}

/// `--object` definitions: the type is checked, the object recorded.
fn check_objects(objects: &[String]) -> Result<()> {
    for o in objects {
        zcow::image_opts::check_object(o).map_err(|m| anyhow::anyhow!(m))?;
    }
    Ok(())
}

fn output_arg(cmd: &'static str, s: &str) -> Result<OutputFormat> {
    OutputFormat::from_arg(s).map_err(|msg| Usage { cmd, msg }.into())
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an image: create [-q] [-p] [-f qcow2] [-o opt=val,...] [-b BACKING [-F FMT]] FILE [SIZE]
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
        /// Show a progress bar while preallocating (on a terminal only).
        #[arg(short = 'p')]
        progress: bool,
        /// Object definition, as qemu-img --object (validated and recorded:
        /// zcow has no secrets or throttle groups).
        #[arg(long = "object", value_name = "OBJECTDEF")]
        object: Vec<String>,
        /// Image file.
        file: Option<PathBuf>,
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
        /// Take no locks that exclude others (the image may be in use and
        /// change while it is read).
        #[arg(short = 'U', long = "force-share")]
        force_share: bool,
        /// Treat FILE as an option string: driver=FMT,file.filename=PATH
        /// (other keys of QEMU's block layer are recorded, see
        /// docs/conformance.md).
        #[arg(long = "image-opts")]
        image_opts: bool,
        /// Object definition, as qemu-img --object (validated and recorded:
        /// zcow has no secrets or throttle groups).
        #[arg(long = "object", value_name = "OBJECTDEF")]
        object: Vec<String>,
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
        /// Take no locks that exclude others (read-only checks only).
        #[arg(short = 'U', long = "force-share")]
        force_share: bool,
        /// Treat FILE as an option string: driver=FMT,file.filename=PATH
        /// (other keys of QEMU's block layer are recorded, see
        /// docs/conformance.md).
        #[arg(long = "image-opts")]
        image_opts: bool,
        /// Object definition, as qemu-img --object (validated and recorded:
        /// zcow has no secrets or throttle groups).
        #[arg(long = "object", value_name = "OBJECTDEF")]
        object: Vec<String>,
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
        /// Replace an existing backup FILE (refused otherwise).
        #[arg(long, requires = "backup")]
        force: bool,
        /// Undo an earlier repair from its backup FILE.
        #[arg(long, value_name = "FILE")]
        undo: Option<PathBuf>,
        /// Output format: human or json.
        #[arg(long = "output", default_value = "human")]
        output: String,
        /// Show a progress bar (on a terminal only).
        #[arg(short = 'p')]
        progress: bool,
        /// Image file.
        file: PathBuf,
    },
    /// Convert or copy images: convert [-c] [-p] [-q] [-n] [-W] [-m N] [-f FMT] [-O FMT] [-o OPTS] [-S SIZE] [--target-is-zero] SOURCE... TARGET
    Convert(Box<ConvertArgs>),
    /// Compare two images: compare [-f FMT] [-F FMT] [-s] [-q] [-p] [--ignore-zones] FILE1 FILE2
    Compare {
        /// Format of the first image.
        #[arg(short = 'f')]
        a_format: Option<String>,
        /// Format of the second image.
        #[arg(short = 'F')]
        b_format: Option<String>,
        /// Strict: sizes and allocation must match too.
        #[arg(short = 's')]
        strict: bool,
        /// Quiet.
        #[arg(short = 'q')]
        quiet: bool,
        /// Progress (accepted for qemu-img compatibility).
        #[arg(short = 'p')]
        progress: bool,
        /// Do not compare the write pointers and conditions of zoned images.
        #[arg(long = "ignore-zones")]
        ignore_zones: bool,
        /// The two images.
        files: Vec<String>,
    },
    /// Show the mapping of an image: map [-f FMT] [--output human|json] [--start-offset N] [--max-length N] FILE
    Map {
        /// Image format (probed when absent).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Output format: human or json.
        #[arg(long = "output", default_value = "human")]
        output: String,
        /// First byte to map.
        #[arg(long = "start-offset", default_value = "0")]
        start: String,
        /// Bytes to map at most.
        #[arg(long = "max-length")]
        max_len: Option<String>,
        /// Treat FILE as an option string: driver=FMT,file.filename=PATH
        /// (other keys of QEMU's block layer are recorded, see
        /// docs/conformance.md).
        #[arg(long = "image-opts")]
        image_opts: bool,
        /// Object definition, as qemu-img --object (validated and recorded:
        /// zcow has no secrets or throttle groups).
        #[arg(long = "object", value_name = "OBJECTDEF")]
        object: Vec<String>,
        /// Image file or NBD URI.
        file: String,
    },
    /// Measure the size a new image needs: measure [--output human|json] [-O FMT] [-o OPTS] [--size N | [-f FMT] FILE]
    Measure {
        /// Output format: human or json.
        #[arg(long = "output", default_value = "human")]
        output: String,
        /// Target format (raw or qcow2; default raw).
        #[arg(short = 'O')]
        out_format: Option<String>,
        /// Target create options (including zone.*).
        #[arg(short = 'o')]
        options: Vec<String>,
        /// Measure an empty image of this size.
        #[arg(long = "size")]
        size: Option<String>,
        /// Source format.
        #[arg(short = 'f')]
        format: Option<String>,
        /// Source image or NBD URI.
        file: Option<String>,
    },
    /// Change options of an image in place: amend [-f FMT] -o OPTS [-q] FILE
    Amend {
        /// Image format (qcow2).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Options: lazy_refcounts, zone.max_open_zones,
        /// zone.max_active_zones, zone.max_append_bytes ('help' lists them).
        #[arg(short = 'o')]
        options: Vec<String>,
        /// Quiet.
        #[arg(short = 'q')]
        quiet: bool,
        /// Progress (accepted for qemu-img compatibility).
        #[arg(short = 'p')]
        progress: bool,
        /// Image file.
        file: Option<PathBuf>,
    },
    /// Zone commands.
    Zone {
        #[command(subcommand)]
        cmd: ZoneCmd,
    },
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// Source format (raw or qcow2; probed when absent).
    #[arg(short = 'f')]
    format: Option<String>,
    /// Target format (raw or qcow2; default raw).
    #[arg(short = 'O')]
    out_format: Option<String>,
    /// Target create options (as for create, including zone.*).
    #[arg(short = 'o')]
    options: Vec<String>,
    /// The target exists: do not create it.
    #[arg(short = 'n')]
    no_create: bool,
    /// Zero-detection granule (default 4k; 0 writes every byte).
    #[arg(short = 'S', default_value = "4k")]
    sparse: String,
    /// The target reads as zeroes already (needs -n).
    #[arg(long = "target-is-zero")]
    target_is_zero: bool,
    /// Allow out-of-order writes (parallel copy onto non-zoned targets).
    #[arg(short = 'W')]
    out_of_order: bool,
    /// Parallel requests (1-16).
    #[arg(short = 'm', default_value = "8")]
    coroutines: String,
    /// Compressed output: each cluster of a qcow2 target compressed with
    /// its compression_type (zlib or zstd; set with -o compression_type=...).
    #[arg(short = 'c')]
    compressed: bool,
    /// Show a progress bar (on a terminal).
    #[arg(short = 'p')]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// Source images (concatenated) followed by the target.
    #[arg(required = true)]
    files: Vec<String>,
}

#[derive(Subcommand)]
enum ZoneCmd {
    /// Report zones (of an image: the persistent state, as after a power
    /// cycle; of a device: its live state).
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
        /// Take no locks that exclude others (the image may be in use; the
        /// report shows what is durable on disk now).
        #[arg(short = 'U', long = "force-share")]
        force_share: bool,
        /// Show a progress bar while reading the zones (on a terminal only).
        #[arg(short = 'p')]
        progress: bool,
        /// Image file, nbd:// URI of a zoned export, or a host-managed zoned
        /// block device (zones from the kernel).
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
        /// Image file, nbd:// URI of a zoned export, or a host-managed zoned
        /// block device.
        file: PathBuf,
    },
    /// Set or clear a persistent fault condition: readonly, offline, clear.
    SetCond {
        /// Send the change to the control socket of the zcow-nbd serving
        /// the image (its --control PATH) instead of opening the image.
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
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
            progress,
            object,
            file,
            size,
        } => {
            check_objects(&object)?;
            if format != "qcow2" && format != "raw" {
                bail!("Unknown file format '{format}' (zcow-img creates qcow2 and raw)");
            }
            if format == "qcow2" && img::create::wants_help(&options) {
                print!("{}", img::create::options_help());
                return Ok(0);
            }
            let given = file.ok_or_else(|| Usage {
                cmd: "create",
                msg: "Expecting image file name".into(),
            })?;
            // `file:NAME` is the file NAME (messages keep the name as given).
            let file = PathBuf::from(zcow::image_opts::file_protocol_path(
                &given.to_string_lossy(),
            ));
            if format == "raw" {
                return create_raw(&file, &options, size.as_deref(), quiet);
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
                    // Only its size is read: force-shared, as qemu-img opens
                    // a backing file for its size (it may be in use).
                    zcow::storage::lock::set_force_share(true);
                    let bi = zcow::format::Qcow2::open_path(
                        &bp,
                        &zcow::format::OpenOptions {
                            read_only: true,
                            backing: zcow::format::BackingPolicy::Skip,
                            ..Default::default()
                        },
                    );
                    zcow::storage::lock::set_force_share(false);
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
                writeln!(
                    stdout,
                    "{}",
                    img::create::formatting_line(&given.to_string_lossy(), &shown)
                )?;
            }
            zcow::format::create::validate(&o)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let st =
                FileStorage::create(&file).map_err(|e| match zcow::storage::open_refusal(&e) {
                    Some(m) => anyhow::anyhow!("{}: {m}", file.display()),
                    None => anyhow::Error::new(e).context(format!(
                        "{}: Could not create '{}'",
                        file.display(),
                        file.display()
                    )),
                })?;
            let bar = zcow::progress::Progress::new(progress && !quiet);
            zcow::format::create::create_with_progress(&st, &o, &bar)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            bar.finish();
            Ok(0)
        }
        Cmd::Info {
            mut format,
            output,
            backing_chain,
            force_share,
            image_opts,
            object,
            file,
        } => {
            check_objects(&object)?;
            let file = PathBuf::from(named_image(
                &file.to_string_lossy(),
                image_opts,
                &mut format,
            )?);
            let output = output_arg("info", &output)?;
            zcow::storage::lock::set_force_share(force_share);
            let name = file.to_string_lossy().into_owned();
            if img::is_uri(&name) {
                let info = img::info::nbd_info(&name).map_err(|e| img_err("info", e))?;
                match output {
                    OutputFormat::Human => write!(stdout, "{}", info.human())?,
                    OutputFormat::Json => write!(stdout, "{}", info.json())?,
                }
                return Ok(0);
            }
            let open_err = |e: zcow::format::FormatError| {
                anyhow::anyhow!("Could not open '{name}': {}", open_msg(&e))
            };
            if backing_chain {
                let chain =
                    img::info::chain_info(&file, &name, format.as_deref()).map_err(open_err)?;
                write!(
                    stdout,
                    "{}",
                    img::info::render_chain(&chain, output == OutputFormat::Json)
                )?;
                return Ok(0);
            }
            let info =
                img::info::image_info_probe(&file, &name, format.as_deref()).map_err(open_err)?;
            match output {
                OutputFormat::Human => write!(stdout, "{}", info.human())?,
                OutputFormat::Json => write!(stdout, "{}", info.json())?,
            }
            Ok(0)
        }
        Cmd::Check {
            mut format,
            repair,
            output,
            quiet,
            progress,
            force_share,
            image_opts,
            object,
            file,
        } => {
            check_objects(&object)?;
            let file = named_image(&file, image_opts, &mut format)?;
            if force_share && repair.is_some() {
                bail!("Could not open '{file}': force-share=on can only be used with read-only images");
            }
            zcow::storage::lock::set_force_share(force_share);
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
                // As qemu-img: -q turns -p off.
                progress: progress && !quiet,
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
            force,
            undo,
            output,
            progress,
            file,
        } => {
            if let Some(b) = undo {
                zcow::check::undo_repair(&file, &b).with_context(|| {
                    format!("undo of the repair of '{}' failed", file.display())
                })?;
                writeln!(
                    stdout,
                    "Restored '{}' from '{}'.",
                    file.display(),
                    b.display()
                )?;
                return Ok(0);
            }
            let opts = RepairOptions {
                dry_run,
                backup,
                force,
                output: output_arg("repair", &output)?,
                progress,
            };
            let code = zcow::check::run_repair(&file, &opts, &mut stdout, &mut stderr)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Cmd::Convert(a) => {
            let mut files = a.files;
            let target = if files.len() >= 2 {
                files.pop().unwrap_or_default()
            } else {
                String::new()
            };
            let sparse = zcow::size::parse_size(&a.sparse).map_err(|_| {
                anyhow::anyhow!("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates output).")
            })?;
            let opts = img::convert::ConvertOptions {
                sources: files,
                src_format: a.format,
                target,
                out_format: a.out_format,
                create_opts: a.options,
                no_create: a.no_create,
                sparse_size: sparse,
                target_is_zero: a.target_is_zero,
                out_of_order: a.out_of_order,
                coroutines: a.coroutines.parse().unwrap_or(0),
                progress: a.progress && !a.quiet,
                compressed: a.compressed,
            };
            img::convert::run(&opts).map_err(|e| img_err("convert", e))?;
            Ok(0)
        }
        Cmd::Compare {
            a_format,
            b_format,
            strict,
            quiet,
            progress: _,
            ignore_zones,
            files,
        } => {
            let [a, b] = <[String; 2]>::try_from(files).map_err(|_| Usage {
                cmd: "compare",
                msg: "Expecting two image file names".into(),
            })?;
            let o = img::compare::CompareOptions {
                a,
                b,
                a_format,
                b_format,
                strict,
                quiet,
                ignore_zones,
            };
            Ok(img::compare::run(&o, &mut stdout, &mut stderr))
        }
        Cmd::Map {
            mut format,
            output,
            start,
            max_len,
            image_opts,
            object,
            file,
        } => {
            check_objects(&object)?;
            let file = named_image(&file, image_opts, &mut format)?;
            let output = output_arg("map", &output)?;
            let num = |what: &str, v: &str| {
                zcow::size::parse_size(v)
                    .map_err(|_| anyhow::anyhow!("Invalid {what} specified: '{v}'"))
            };
            let o = img::map::MapOptions {
                file,
                format,
                json: output == OutputFormat::Json,
                start: num("start offset", &start)?,
                max_len: max_len.map(|m| num("max length", &m)).transpose()?,
            };
            let (entries, zones) = img::map::map(&o).map_err(|e| img_err("map", e))?;
            let text = match output {
                OutputFormat::Json => img::map::render_json(&entries),
                OutputFormat::Human => {
                    // What comes before a refused run is printed, as by qemu-img.
                    let mut s = String::new();
                    let r = img::map::render_human_into(&entries, &zones, &mut s);
                    if r.is_err() {
                        print!("{s}");
                    }
                    r.map_err(|e| img_err("map", e))?;
                    s
                }
            };
            print!("{text}");
            Ok(0)
        }
        Cmd::Measure {
            output,
            out_format,
            options,
            size,
            format,
            file,
        } => {
            let output = output_arg("measure", &output)?;
            let size = size
                .map(|s| {
                    zcow::size::parse_size(&s)
                        .map_err(|_| anyhow::anyhow!("Invalid image size specified: '{s}'."))
                })
                .transpose()?;
            let o = img::measure::MeasureOptions {
                size,
                file,
                format,
                out_format,
                create_opts: options,
            };
            let m = img::measure::measure(&o).map_err(|e| img_err("measure", e))?;
            print!(
                "{}",
                match output {
                    OutputFormat::Human => img::measure::render_human(&m),
                    OutputFormat::Json => img::measure::render_json(&m),
                }
            );
            Ok(0)
        }
        Cmd::Amend {
            format,
            options,
            quiet: _,
            progress: _,
            file,
        } => {
            if img::create::wants_help(&options) {
                print!("{}", img::amend::AMEND_HELP);
                return Ok(0);
            }
            let file = file.ok_or_else(|| Usage {
                cmd: "amend",
                msg: "Expecting one image file name".into(),
            })?;
            img::amend::run(&file, format.as_deref(), &options).map_err(|e| img_err("amend", e))?;
            Ok(0)
        }
        Cmd::Zone { cmd } => match cmd {
            ZoneCmd::Report {
                offset,
                count,
                output,
                force_share,
                progress,
                file,
            } => {
                // blkzone's layout is zone report's own third format.
                let blkzone = output == "blkzone";
                let output = if blkzone {
                    OutputFormat::Human
                } else {
                    output_arg("zone report", &output)?
                };
                zcow::storage::lock::set_force_share(force_share);
                let off = zcow::size::parse_size(&offset).map_err(anyhow::Error::msg)?;
                let bar = zcow::progress::Progress::new(progress);
                let zones = if img::is_device(&file.to_string_lossy()) {
                    img::zone::report_device(&file.to_string_lossy(), off, count, &bar)
                        .map_err(|e| img_err("zone report", e))?
                } else {
                    img::zone::report(&file, off, count, &bar)
                        .map_err(|e| {
                            anyhow::anyhow!("Could not open '{}': {}", file.display(), open_msg(&e))
                        })?
                        .1
                };
                let text = match output {
                    _ if blkzone => img::zone::render_blkzone(&zones, &bar),
                    OutputFormat::Human => img::zone::render_human(&zones, &bar),
                    OutputFormat::Json => img::zone::render_json(&zones, &bar),
                };
                bar.finish();
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
            ZoneCmd::SetCond {
                control,
                file,
                zone,
                cond,
            } => {
                let c = match cond.as_str() {
                    "readonly" | "read-only" | "ro" => img::zone::FaultCond::ReadOnly,
                    "offline" => img::zone::FaultCond::Offline,
                    "clear" => img::zone::FaultCond::Clear,
                    _ => bail!("unknown condition '{cond}' (use readonly, offline or clear)"),
                };
                if let Some(sock) = control {
                    let name = match c {
                        img::zone::FaultCond::ReadOnly => "readonly",
                        img::zone::FaultCond::Offline => "offline",
                        img::zone::FaultCond::Clear => "clear",
                    };
                    let req = serde_json::json!({"op": "set-cond", "zone": zone, "cond": name});
                    let reply = zcow::control::request(&sock, &req)
                        .with_context(|| format!("control socket {}", sock.display()))?;
                    if reply["ok"] != serde_json::json!(true) {
                        bail!(
                            "{}: {}",
                            file.display(),
                            reply["error"]
                                .as_str()
                                .unwrap_or("the server refused the change")
                        );
                    }
                    writeln!(
                        stdout,
                        "zone {zone}: {}",
                        reply["zone"]["condition"].as_str().unwrap_or("?")
                    )?;
                    return Ok(0);
                }
                let now = img::zone::set_cond(&file, zone, c).map_err(|e| {
                    match zcow::storage::lock::conflict_in(&e) {
                        // The image is in use: a running zcow-nbd changes
                        // zones through its control socket, never under it.
                        Some(c) => anyhow::anyhow!(
                            "Could not open '{}': {c}\nIf zcow-nbd serves it, send the change \
                             to the server's control socket (zcow-nbd --control PATH): \
                             zcow-img zone set-cond --control PATH {} {zone} {cond}",
                            file.display(),
                            file.display()
                        ),
                        None => anyhow::anyhow!("{}: {e}", file.display()),
                    }
                })?;
                writeln!(stdout, "zone {zone}: {}", now.name())?;
                Ok(0)
            }
        },
    }
}

/// An image command's error: usage errors get qemu-img's hint line.
fn img_err(cmd: &'static str, e: img::ImgError) -> anyhow::Error {
    match e {
        img::ImgError::Usage(msg) => Usage { cmd, msg }.into(),
        other => anyhow::anyhow!("{other}"),
    }
}

/// Whether an error is a write to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// An open error as QEMU prints it: a lock conflict or a directory on its
/// own, anything else as its message.
fn open_msg(e: &(dyn std::error::Error + 'static)) -> String {
    zcow::storage::open_refusal(e).unwrap_or_else(|| e.to_string())
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
        // The reader went away (`zcow-img zone report IMG | head -1`):
        // nothing to say and no one to say it to; exit as a C tool killed
        // by SIGPIPE looks to the shell.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            // Not eprintln!: it panics when stderr is closed.
            let _ = writeln!(std::io::stderr(), "{prog}: {e:#}");
            ExitCode::from(1)
        }
    }
}
