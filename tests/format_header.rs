//! Header details: unknown extensions and additional header fields survive
//! a rewrite, unknown autoclear bits are cleared by a read-write open (and
//! kept by a read-only one), feature names come from the image's table.

use std::sync::Arc;
use zcow::format::create::{create, CreateOptions};
use zcow::format::header::{Extension, Header, ParseMode};
use zcow::format::image::read_header_cluster;
use zcow::format::{OpenOptions, Qcow2};
use zcow::storage::{MemStorage, Storage};

fn image() -> Vec<u8> {
    let m = MemStorage::new();
    create(
        &m,
        &CreateOptions {
            size: 64 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    m.to_vec()
}

#[test]
fn unknown_extension_and_additional_fields_survive_a_rewrite() {
    let b = image();
    let mut h = Header::parse(&b[..65536], ParseMode::default()).unwrap();
    h.extensions.push(Extension::Unknown {
        magic: 0x1234_5678,
        data: vec![1, 2, 3, 4, 5],
    });
    h.header_length = 120;
    h.additional = vec![
        0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x11, 0x22,
    ];
    let enc = h.encode().unwrap();
    let again = Header::parse(&enc, ParseMode::default()).unwrap();
    assert_eq!(again.extensions, h.extensions);
    assert_eq!(again.additional, h.additional);
    assert_eq!(again.header_length, 120);
    // And through a real open of an image carrying them.
    let mut img = b.clone();
    img[..enc.len()].copy_from_slice(&enc);
    let q = Qcow2::open(
        Arc::new(MemStorage::from_bytes(img)),
        &OpenOptions::default(),
    )
    .unwrap();
    assert!(q.header().extensions.contains(&Extension::Unknown {
        magic: 0x1234_5678,
        data: vec![1, 2, 3, 4, 5]
    }));
}

#[test]
fn unknown_autoclear_bits_are_cleared_only_by_read_write_open() {
    let mut b = image();
    b[88..96].copy_from_slice(&0x8000_0000_0000_0004u64.to_be_bytes());
    let st = Arc::new(MemStorage::from_bytes(b));
    let ro = Qcow2::open(
        st.clone(),
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ro.header().autoclear_features, 0x8000_0000_0000_0004);
    drop(ro);
    let rw = Qcow2::open(st.clone(), &OpenOptions::default()).unwrap();
    assert_eq!(rw.header().autoclear_features, 0);
    drop(rw);
    let c0 = read_header_cluster(st.as_ref()).unwrap();
    assert_eq!(
        Header::parse(&c0, ParseMode::default())
            .unwrap()
            .autoclear_features,
        0
    );
    assert!(st.len().unwrap() > 0);
}

#[test]
fn unknown_incompatible_bits_are_named_from_the_table() {
    let b = image();
    let mut h = Header::parse(&b[..65536], ParseMode::default()).unwrap();
    for e in h.extensions.iter_mut() {
        if let Extension::FeatureTable(t) = e {
            t.push(zcow::format::features::FeatureName {
                kind: 0,
                bit: 7,
                name: "my new feature".into(),
            });
        }
    }
    h.incompatible_features |= (1 << 7) | (1 << 6);
    let enc = h.encode().unwrap();
    let mut img = b.clone();
    img[..enc.len()].copy_from_slice(&enc);
    let e = Qcow2::open(
        Arc::new(MemStorage::from_bytes(img)),
        &OpenOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Unsupported qcow2 feature(s): my new feature, Unknown incompatible feature: 40"
    );
}
