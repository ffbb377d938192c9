//! The write-pointer array of a zoned image: reading and writing its
//! entries.

use super::*;

impl Qcow2 {
    /// Read and decode the whole write-pointer array.
    pub fn read_wp_entries(&self) -> Result<Vec<WpEntry>> {
        let z = self
            .zoned
            .as_ref()
            .ok_or_else(|| FormatError::Unsupported("the image is not zoned".into()))?;
        // A check-mode open keeps an extension that failed validation: its
        // size may be anything and its geometry overflows the decoder.
        z.ext.validate(self.p.size, self.p.cs, self.store.len()?)?;
        let mut raw = vec![0u8; z.ext.zonedmeta_size as usize];
        self.store.read_at(z.ext.zonedmeta_offset, &mut raw)?;
        let (entries, _) = decode_wp_array(&z.geometry, &raw);
        let _ = GuestOffset(0);
        Ok(entries)
    }

    /// Write the entries of zones `first..` big-endian (not synced).
    pub fn write_wp_entries(&self, first: u32, entries: &[WpEntry]) -> Result<()> {
        if self.read_only {
            return Err(FormatError::ReadOnly);
        }
        let z = self
            .zoned
            .as_ref()
            .ok_or_else(|| FormatError::Unsupported("the image is not zoned".into()))?;
        // Never write through an extension that failed validation.
        z.ext.validate(self.p.size, self.p.cs, self.store.len()?)?;
        if first as u64 + entries.len() as u64 > z.ext.nr_zones as u64 {
            return Err(FormatError::OutOfRange {
                offset: first as u64,
                len: entries.len() as u64,
                size: z.ext.nr_zones as u64,
            });
        }
        let at = z.ext.zonedmeta_offset + first as u64 * 8;
        let bytes = encode_wp_entries(entries);
        self.guard(
            &mut lock(&self.meta),
            Some(Kind::WpArray),
            at,
            bytes.len() as u64,
        )?;
        self.store.write_at(at, &bytes)?;
        Ok(())
    }

    /// Sync the image file (after the caller wrote write-pointer entries).
    pub fn sync_file(&self) -> Result<()> {
        Ok(self.store.sync()?)
    }
}
