//! Overlap protection while the image is open: every write is checked
//! against the metadata map; a write that would overwrite metadata marks the
//! image corrupt instead, as QEMU's `overlap-check` does.

use super::*;

impl Qcow2 {
    /// The metadata overlap found when the image was opened read-only (a
    /// read-write open refuses such an image).
    pub fn metadata_overlap(&self) -> Option<&str> {
        self.overlap_warning.as_deref()
    }

    /// Refuse a write of `target` (None: guest data) that would touch other
    /// metadata, marking the image corrupt as QEMU's overlap check does.
    pub(super) fn guard(
        &self,
        m: &mut Meta,
        target: Option<Kind>,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        self.guard_as(m, target, offset, len, || match target {
            Some(k) => k.to_string(),
            None => "guest data".into(),
        })
    }

    /// [`Qcow2::guard`] naming the write with `what` (built only when the
    /// write is refused: this runs on every write).
    pub(super) fn guard_as(
        &self,
        m: &mut Meta,
        target: Option<Kind>,
        offset: u64,
        len: u64,
        what: impl FnOnce() -> String,
    ) -> Result<()> {
        if m.corrupt {
            return Err(FormatError::Corrupt(
                "the image was marked corrupt after a refused metadata overwrite; no further writes"
                    .into(),
            ));
        }
        match m.overlap.conflict(target, offset, len) {
            None => Ok(()),
            Some(hit) => Err(self.mark_corrupt(
                m,
                format!(
                    "Preventing invalid write on metadata ({} at offset {offset:#x}, {len} bytes, overlaps with {hit})",
                    what()
                ),
            )),
        }
    }

    /// Record a new metadata region, refusing one that would share a
    /// cluster with existing metadata.
    pub(super) fn add_region(&self, m: &mut Meta, r: Region, offset: u64, len: u64) -> Result<()> {
        match m.overlap.insert(r, offset, len) {
            Ok(()) => Ok(()),
            Err(o) => {
                Err(self.mark_corrupt(m, format!("Preventing invalid write on metadata ({o})")))
            }
        }
    }

    /// Set the corrupt bit (once) and stop writing; the error to return.
    pub(super) fn mark_corrupt(&self, m: &mut Meta, why: String) -> FormatError {
        if m.corrupt {
            return FormatError::Corrupt(why);
        }
        m.corrupt = true;
        let mut note = String::new();
        if m.header.version >= 3 && !self.read_only {
            // Cluster 0 is the header's alone (checked at open).
            let f = m.header.incompatible_features | INCOMPAT_CORRUPT;
            let done = self
                .store
                .write_at(field::INCOMPAT, &f.to_be_bytes())
                .and_then(|()| self.store.sync());
            match done {
                Ok(()) => m.header.incompatible_features = f,
                Err(e) => note = format!(" (setting the corrupt bit failed: {e})"),
            }
        }
        // QEMU reports the event on stderr whoever the caller is; an NBD
        // server's operator must see it even though the client gets EIO.
        // Never panics on a closed stderr.
        let _ = writeln!(
            std::io::stderr(),
            "qcow2: Marking image as corrupt: {why}; further corruption events will be suppressed{note}"
        );
        FormatError::Corrupt(format!("{why}; the image is marked corrupt{note}"))
    }

    /// Set or clear the corrupt bit (v3 only) durably.
    pub fn set_corrupt_bit(&self, on: bool) -> Result<()> {
        let mut m = lock(&self.meta);
        if m.header.version < 3 || self.read_only {
            return Ok(());
        }
        let mut f = m.header.incompatible_features;
        if on {
            f |= INCOMPAT_CORRUPT;
        } else {
            f &= !INCOMPAT_CORRUPT;
        }
        self.guard(&mut m, Some(Kind::Header), field::INCOMPAT, 8)?;
        self.store.write_at(field::INCOMPAT, &f.to_be_bytes())?;
        self.store.sync()?;
        m.header.incompatible_features = f;
        Ok(())
    }
}
