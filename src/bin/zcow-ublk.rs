//! zcow-ublk: serve a zcow image (zoned qcow2, qcow2 or raw) as a Linux ublk
//! block device; zoned images become host-managed zoned disks.

use anyhow::{Context, Result};
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use zcow::open::{open_device, OpenOptions};
use zcow::ublk::{layout, serve, ServeOptions};

/// Serve a zcow image as a Linux block device (/dev/ublkbN).
///
/// Zoned qcow2 images become host-managed zoned block devices (zone
/// report, open, close, finish, reset, zone append); plain qcow2 and raw
/// images ordinary disks. Runs in the foreground and prints the device path
/// once the device is live; SIGTERM or SIGINT remove the device, flush and
/// close the image. Needs root and the ublk driver (`modprobe ublk_drv`).
#[derive(Debug, Parser)]
#[command(name = "zcow-ublk", version)]
struct Args {
    /// Image file to serve.
    image: PathBuf,
    /// Image format (probed when absent).
    #[arg(short = 'f', long, value_parser = ["qcow2", "raw"])]
    format: Option<String>,
    /// Serve read-only.
    #[arg(short = 'r', long)]
    read_only: bool,
    /// Hardware queues (one thread each).
    #[arg(short = 'q', long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=32))]
    queues: u16,
    /// Requests in flight per queue.
    #[arg(short = 'd', long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    depth: u16,
    /// Worker threads per queue for flushes, zone management and large
    /// transfers (0: the queue thread runs every request, one at a time).
    #[arg(short = 'w', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(0..=64))]
    workers: u16,
    /// Device number N of /dev/ublkbN (default: the driver picks).
    #[arg(long)]
    id: Option<u16>,
}

fn main() {
    if zcow::cli_docs::generate_if_asked(<Args as clap::CommandFactory>::command) {
        return;
    }
    if let Err(e) = run() {
        eprintln!("zcow-ublk: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    let device = open_device(
        &args.image,
        &OpenOptions {
            format: args.format.clone(),
            read_only: args.read_only,
            allow_backing: false,
        },
    )
    .with_context(|| format!("cannot open {}", args.image.display()))?;

    zcow::signals::install();

    let opts = ServeOptions {
        id: args.id.map_or(-1, i32::from),
        queues: args.queues,
        depth: args.depth,
        workers: args.workers,
        ..ServeOptions::default()
    };
    let lay = layout(device.as_ref(), opts.max_io_bytes)
        .with_context(|| format!("cannot serve {}", args.image.display()))?;
    if lay.hidden > 0 {
        eprintln!(
            "zcow-ublk: note: the last {:#x} bytes of the image are not exposed \
             (Linux shows whole zones and whole sectors only)",
            lay.hidden
        );
    }
    let served = serve(device.clone(), &opts, &zcow::signals::STOP, |path| {
        // A closed stdout must not stop the device.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{path}");
        let _ = out.flush();
    });
    // Whatever happened, what was acknowledged is made durable.
    let flushed = device.flush();
    served.with_context(|| format!("cannot serve {}", args.image.display()))?;
    flushed.context("final flush")?;
    Ok(())
}
