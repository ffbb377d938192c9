//! Recognising image formats by their first bytes, as QEMU's format probes
//! do, so that an image zcow cannot read (vdi, vmdk, vhdx, qed, luks, ...)
//! is refused by name instead of being opened, and overwritten, as raw.

use std::path::Path;

/// How many leading bytes the probes look at (QEMU's probe buffer, and the
/// block a guessed raw image protects).
pub const PROBE_LEN: usize = 512;

/// What the first bytes of an image say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    /// qcow2 (version 2 or 3).
    Qcow2,
    /// Another format, by QEMU's driver name; zcow does not read it.
    Other(&'static str),
    /// Nothing recognised: raw.
    Raw,
}

fn at(head: &[u8], off: usize, magic: &[u8]) -> bool {
    head.get(off..off + magic.len()) == Some(magic)
}

/// Probe the first bytes of an image (up to [`PROBE_LEN`]; shorter is fine).
pub fn probe(head: &[u8]) -> Probed {
    if at(head, 0, b"QFI\xfb") {
        // QEMU's qcow driver takes version 1, qcow2 the rest.
        return match head.get(4..8) {
            Some([0, 0, 0, 1]) => Probed::Other("qcow"),
            _ => Probed::Qcow2,
        };
    }
    const MAGICS: &[(usize, &[u8], &str)] = &[
        (0, b"QED\0", "qed"),
        // VDI: little-endian signature 0xbeda107f at byte 64.
        (64, b"\x7f\x10\xda\xbe", "vdi"),
        (0, b"KDMV", "vmdk"),
        (0, b"COWD", "vmdk"),
        (0, b"# Disk DescriptorFile", "vmdk"),
        (0, b"vhdxfile", "vhdx"),
        (0, b"conectix", "vpc"),
        (0, b"LUKS\xba\xbe", "luks"),
        (0, b"WithoutFreeSpace", "parallels"),
        (0, b"WithouFreSpacExt", "parallels"),
        (0, b"Bochs Virtual HD Image", "bochs"),
        (
            0,
            b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$IMAGE\n",
            "cloop",
        ),
    ];
    for (off, magic, name) in MAGICS {
        if at(head, *off, magic) {
            return Probed::Other(name);
        }
    }
    Probed::Raw
}

/// Probe an image file: its first bytes, and (like QEMU's dmg driver) a
/// `.dmg` name. Unreadable short files probe as raw.
pub fn probe_file(path: &Path, head: &[u8]) -> Probed {
    match probe(head) {
        Probed::Raw
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("dmg")) =>
        {
            Probed::Other("dmg")
        }
        p => p,
    }
}

/// The refusal for an image in a format zcow does not read.
pub fn unsupported_message(format: &str) -> String {
    format!(
        "Image is in {format} format, which zcow does not support (zcow reads qcow2 and raw; \
         use -f raw to access the file's bytes)"
    )
}

/// QEMU's warning for a writable image whose format was guessed raw.
pub fn guessed_raw_warning(name: &str) -> String {
    format!(
        "WARNING: Image format was not specified for '{name}' and probing guessed raw.\n         \
         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         \
         Specify the 'raw' format explicitly to remove the restrictions."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_qemu_formats_by_magic() {
        let mut vdi = vec![0u8; 512];
        vdi[64..68].copy_from_slice(&0xbeda107fu32.to_le_bytes());
        assert_eq!(probe(&vdi), Probed::Other("vdi"));
        assert_eq!(probe(b"QFI\xfb\0\0\0\x01"), Probed::Other("qcow"));
        assert_eq!(probe(b"QFI\xfb\0\0\0\x03"), Probed::Qcow2);
        assert_eq!(probe(b"vhdxfile"), Probed::Other("vhdx"));
        assert_eq!(probe(b"LUKS\xba\xbe\0\x01"), Probed::Other("luks"));
        assert_eq!(probe(&[0u8; 512]), Probed::Raw);
        assert_eq!(probe(b""), Probed::Raw);
        assert_eq!(
            probe_file(Path::new("a.DMG"), &[0u8; 16]),
            Probed::Other("dmg")
        );
    }
}
