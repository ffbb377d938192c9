//! Refcount block entries of every width (1–64 bits; sub-byte widths are
//! packed LSB first, wider ones are big-endian).

/// Read entry `i` of a refcount block with `1 << order` bit entries.
pub fn get(block: &[u8], order: u32, i: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let byte = block[i >> (3 - order)];
            let shift = (i << order) & 7;
            ((byte >> shift) as u64) & ((1u64 << bits) - 1)
        }
        3 => block[i] as u64,
        4 => u16::from_be_bytes([block[2 * i], block[2 * i + 1]]) as u64,
        5 => {
            let o = 4 * i;
            u32::from_be_bytes([block[o], block[o + 1], block[o + 2], block[o + 3]]) as u64
        }
        _ => {
            let o = 8 * i;
            let mut a = [0u8; 8];
            a.copy_from_slice(&block[o..o + 8]);
            u64::from_be_bytes(a)
        }
    }
}

/// Write entry `i`. The caller ensures `value` fits ([`max_value`]).
pub fn set(block: &mut [u8], order: u32, i: usize, value: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let idx = i >> (3 - order);
            let shift = (i << order) & 7;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            block[idx] = (block[idx] & !mask) | (((value as u8) << shift) & mask);
        }
        3 => block[i] = value as u8,
        4 => block[2 * i..2 * i + 2].copy_from_slice(&(value as u16).to_be_bytes()),
        5 => block[4 * i..4 * i + 4].copy_from_slice(&(value as u32).to_be_bytes()),
        _ => block[8 * i..8 * i + 8].copy_from_slice(&value.to_be_bytes()),
    }
}

/// Largest refcount of the width.
pub fn max_value(order: u32) -> u64 {
    if order >= 6 {
        u64::MAX
    } else {
        (1u64 << (1u32 << order)) - 1
    }
}

/// Entries per refcount block.
pub fn entries_per_block(cluster_bits: u32, order: u32) -> u64 {
    1u64 << (cluster_bits + 3 - order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_like_qemu() {
        // A block with refcount 1 everywhere, per width.
        let expect: [(u32, &[u8]); 7] = [
            (0, &[0xff]),
            (1, &[0x55]),
            (2, &[0x11]),
            (3, &[0x01, 0x01]),
            (4, &[0x00, 0x01]),
            (5, &[0, 0, 0, 1]),
            (6, &[0, 0, 0, 0, 0, 0, 0, 1]),
        ];
        for (order, bytes) in expect {
            let mut b = vec![0u8; 64];
            for i in 0..(64 * 8) >> order {
                set(&mut b, order, i, 1);
            }
            assert_eq!(&b[..bytes.len()], bytes, "order {order}");
            for i in 0..(64 * 8) >> order {
                assert_eq!(get(&b, order, i), 1);
            }
        }
    }

    #[test]
    fn set_does_not_touch_neighbours() {
        for order in 0..=6 {
            let mut b = vec![0u8; 64];
            let m = max_value(order);
            set(&mut b, order, 3, m);
            assert_eq!(get(&b, order, 2), 0);
            assert_eq!(get(&b, order, 3), m);
            assert_eq!(get(&b, order, 4), 0);
        }
    }
}
