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
        z.ext.validate(self.size(), self.p.cs, self.store.len()?)?;
        if z.ext.zonedmeta_size > crate::format::zoned::WP_WHOLE_LIMIT {
            return Err(FormatError::Unsupported(format!(
                "the write-pointer array of {} zones ({} MiB) is too large to read whole (limit {} MiB); it is read in pages instead",
                z.ext.nr_zones,
                z.ext.zonedmeta_size >> 20,
                crate::format::zoned::WP_WHOLE_LIMIT >> 20
            )));
        }
        let mut raw = vec![0u8; z.ext.zonedmeta_size as usize];
        self.store.read_at(z.ext.zonedmeta_offset, &mut raw)?;
        let (entries, _) = decode_wp_array(&z.geometry, &raw);
        let _ = GuestOffset(0);
        Ok(entries)
    }

    /// Read the entries of zones `first..first+out.len()` (in the byte order
    /// the array was found in at open) without reading the rest.
    pub fn read_wp_range(&self, first: u32, out: &mut [u64]) -> Result<()> {
        let z = self
            .zoned
            .as_ref()
            .ok_or_else(|| FormatError::Unsupported("the image is not zoned".into()))?;
        z.ext.validate(self.size(), self.p.cs, self.store.len()?)?;
        if u64::from(first) + out.len() as u64 > u64::from(z.ext.nr_zones) {
            return Err(FormatError::OutOfRange {
                offset: u64::from(first),
                len: out.len() as u64,
                size: u64::from(z.ext.nr_zones),
            });
        }
        let order = z.order.unwrap_or(WpByteOrder::BigEndian);
        let mut raw = vec![0u8; out.len().min(crate::format::zoned::WP_PAGE as usize) * 8];
        let mut done = 0usize;
        while done < out.len() {
            let k = (out.len() - done).min(crate::format::zoned::WP_PAGE as usize);
            let at = z.ext.zonedmeta_offset + (u64::from(first) + done as u64) * 8;
            self.store.read_at(at, &mut raw[..k * 8])?;
            for (o, c) in out[done..done + k].iter_mut().zip(raw.chunks_exact(8)) {
                *o = order.decode(c).0;
            }
            done += k;
        }
        Ok(())
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
        z.ext.validate(self.size(), self.p.cs, self.store.len()?)?;
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
