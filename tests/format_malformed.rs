//! Malformed headers: every qemu-img open-time failure cause gives a clear
//! error (same meaning as qemu-img's message) and never a panic.

use std::sync::Arc;
use zcow::format::create::{create, CreateOptions};
use zcow::format::zoned::ZonedCreateOptions;
use zcow::format::{OpenOptions, Qcow2};
use zcow::storage::MemStorage;

fn fresh(o: &CreateOptions) -> Vec<u8> {
    let m = MemStorage::new();
    create(&m, o).unwrap();
    m.to_vec()
}

fn plain() -> Vec<u8> {
    fresh(&CreateOptions {
        size: 64 << 20,
        ..Default::default()
    })
}

fn open_err(b: Vec<u8>) -> String {
    match Qcow2::open(Arc::new(MemStorage::from_bytes(b)), &OpenOptions::default()) {
        Ok(_) => "opened".into(),
        Err(e) => e.to_string(),
    }
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn each_qemu_open_failure_has_a_clear_error() {
    type Patch = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Patch, &str)> = vec![
        (
            "bad magic",
            Box::new(|b| put32(b, 0, 0x12345678)),
            "Image is not in qcow2 format",
        ),
        (
            "version 1",
            Box::new(|b| put32(b, 4, 1)),
            "Unsupported qcow2 version 1",
        ),
        (
            "version 4",
            Box::new(|b| put32(b, 4, 4)),
            "Unsupported qcow2 version 4",
        ),
        (
            "cluster_bits 8",
            Box::new(|b| put32(b, 20, 8)),
            "Unsupported cluster size: 2^8",
        ),
        (
            "cluster_bits 22",
            Box::new(|b| put32(b, 20, 22)),
            "Unsupported cluster size: 2^22",
        ),
        (
            "refcount_order 7",
            Box::new(|b| put32(b, 96, 7)),
            "Reference count entry width too large; may not exceed 64 bits",
        ),
        (
            "header_length 100",
            Box::new(|b| put32(b, 100, 100)),
            "qcow2 header too short",
        ),
        (
            "header_length huge",
            Box::new(|b| put32(b, 100, 0x20000)),
            "qcow2 header exceeds cluster size",
        ),
        (
            "l1 unaligned",
            Box::new(|b| put64(b, 40, 0x30001)),
            "Active L1 table offset invalid",
        ),
        (
            "reftable unaligned",
            Box::new(|b| put64(b, 48, 0x10001)),
            "Reference count table offset invalid",
        ),
        (
            "reftable huge",
            Box::new(|b| put32(b, 56, 0x100000)),
            "Reference count table too large",
        ),
        (
            "l1 too small",
            Box::new(|b| put32(b, 36, 0)),
            "L1 table is too small",
        ),
        (
            "l1 too large",
            Box::new(|b| put32(b, 36, 0x1000001)),
            "Active L1 table too large",
        ),
        (
            "extension too large",
            Box::new(|b| put32(b, 0x74, 0x7fffffff)),
            "Header extension too large",
        ),
        (
            "backing name too long",
            Box::new(|b| {
                put64(b, 8, 0x300);
                put32(b, 16, 1024);
            }),
            "Backing file name too long",
        ),
        (
            "backing offset",
            Box::new(|b| {
                put64(b, 8, 0x20000);
                put32(b, 16, 4);
            }),
            "Invalid backing file offset",
        ),
        (
            "crypt 3",
            Box::new(|b| put32(b, 32, 3)),
            "Unsupported encryption method 3",
        ),
        (
            "unknown incompat",
            Box::new(|b| put64(b, 72, 1 << 40)),
            "Unsupported qcow2 feature(s): Unknown incompatible feature: 10000000000",
        ),
        (
            "ctype 1 no bit",
            Box::new(|b| b[104] = 1),
            "Compression type incompatible feature bit must be set",
        ),
        (
            "bit 3 ctype 0",
            Box::new(|b| put64(b, 72, 8)),
            "Compression type incompatible feature bit must not be set",
        ),
        (
            "ctype 2",
            Box::new(|b| {
                b[104] = 2;
                put64(b, 72, 8);
            }),
            "unknown compression type: 2",
        ),
        (
            "data file bit",
            Box::new(|b| put64(b, 72, 4)),
            "'data-file' is required for this image",
        ),
        (
            "zoned bit without extension",
            Box::new(|b| put64(b, 72, 0x20)),
            "zoned format",
        ),
        ("huge size", Box::new(|b| put64(b, 24, u64::MAX)), "too big"),
        (
            "truncated",
            Box::new(|b| b.truncate(50)),
            "not in qcow2 format",
        ),
        ("empty", Box::new(|b| b.clear()), "not in qcow2 format"),
        (
            "l1 past eof",
            Box::new(|b| put64(b, 40, 0x100000)),
            "past the end of the file",
        ),
    ];
    for (name, patch, want) in cases {
        let mut b = plain();
        patch(&mut b);
        let e = open_err(b);
        assert!(e.contains(want), "{name}: got '{e}', want '{want}'");
    }
}

#[test]
fn zoned_extension_problems_refuse_read_write_open() {
    let z = fresh(&CreateOptions {
        size: 1 << 30,
        zoned: Some(ZonedCreateOptions {
            zone_size: Some(64 << 20),
            conventional_zones: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    });
    // Locate the extension (magic 0x007a6264) in cluster 0.
    let pos = z
        .windows(4)
        .position(|w| w == [0, 0x7a, 0x62, 0x64])
        .unwrap()
        + 8;
    type Patch = Box<dyn Fn(&mut Vec<u8>, usize)>;
    let cases: Vec<(&str, Patch, &str)> = vec![
        ("model", Box::new(|b, p| b[p] = 2), "zone model 2"),
        ("reserved", Box::new(|b, p| b[p + 1] = 1), "reserved bytes"),
        (
            "zone size",
            Box::new(|b, p| put64(b, p + 4, 3 << 20)),
            "zone_size",
        ),
        (
            "capacity",
            Box::new(|b, p| put64(b, p + 12, 128 << 20)),
            "zone_capacity",
        ),
        (
            "nr_zones",
            Box::new(|b, p| put32(b, p + 24, 7)),
            "nr_zones is 7",
        ),
        (
            "conventional",
            Box::new(|b, p| put32(b, p + 20, 16)),
            "conventional_zones 16",
        ),
        (
            "meta size",
            Box::new(|b, p| put64(b, p + 40, 8)),
            "zonedmeta_size",
        ),
        (
            "meta offset",
            Box::new(|b, p| put64(b, p + 48, 0x30008)),
            "zonedmeta_offset",
        ),
        (
            "meta past eof",
            Box::new(|b, p| put64(b, p + 48, 0x1000_0000)),
            "past the end",
        ),
        ("bit 5 clear", Box::new(|b, _| b[79] &= !0x20), "bit 5"),
        (
            "wp outside zone",
            Box::new(|b, p| {
                let off = u64::from_be_bytes(b[p + 48..p + 56].try_into().unwrap()) as usize;
                put64(b, off + 8 * 3, 1 << 40);
            }),
            "write-pointer entry of zone 3",
        ),
        (
            "conventional bit",
            Box::new(|b, p| {
                let off = u64::from_be_bytes(b[p + 48..p + 56].try_into().unwrap()) as usize;
                put64(b, off, 0);
            }),
            "conventional bit missing",
        ),
    ];
    for (name, patch, want) in cases {
        let mut b = z.clone();
        patch(&mut b, pos);
        let e = open_err(b);
        assert!(e.contains(want), "{name}: got '{e}', want '{want}'");
    }
}

#[test]
fn little_endian_array_is_read_but_not_written() {
    let mut z = fresh(&CreateOptions {
        size: 1 << 30,
        zoned: Some(ZonedCreateOptions {
            zone_size: Some(64 << 20),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pos = z
        .windows(4)
        .position(|w| w == [0, 0x7a, 0x62, 0x64])
        .unwrap()
        + 8;
    let off = u64::from_be_bytes(z[pos + 48..pos + 56].try_into().unwrap()) as usize;
    for i in 0..16 {
        let v = (i as u64) * (64 << 20) + if i == 2 { 4096 } else { 0 };
        z[off + 8 * i..off + 8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }
    let img = Qcow2::open(
        Arc::new(MemStorage::from_bytes(z.clone())),
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let zi = img.zoned().unwrap();
    assert_eq!(
        zi.order,
        Some(zcow::format::zoned::WpByteOrder::LittleEndian)
    );
    assert_eq!(
        img.read_wp_entries().unwrap()[2].wp(),
        2 * (64 << 20) + 4096
    );
    assert!(open_err(z).contains("little-endian"));
}

#[test]
fn random_bytes_never_panic() {
    use proptest::prelude::*;
    let base = plain();
    let mut runner = proptest::test_runner::TestRunner::default();
    runner
        .run(
            &(prop::collection::vec((0usize..1024, any::<u8>()), 1..16)),
            |edits| {
                let mut b = base.clone();
                for (i, v) in edits {
                    if i < b.len() {
                        b[i] = v;
                    }
                }
                if let Ok(img) = Qcow2::open(
                    Arc::new(MemStorage::from_bytes(b)),
                    &OpenOptions {
                        read_only: true,
                        ..Default::default()
                    },
                ) {
                    let mut buf = vec![0u8; 65536];
                    let _ = img.read(0, &mut buf);
                }
                Ok(())
            },
        )
        .unwrap();
}
