//! Client-to-server payload unmasking (RFC 6455 section 5.3).

/// XOR `buf` with `mask`, where `buf[0]` is payload byte number `offset` of
/// the frame (the mask repeats every four bytes).
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = [0u8; 4];
    for (i, b) in m.iter_mut().enumerate() {
        *b = mask[(offset + i) & 3];
    }
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("chunk of 8")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= mask[(offset + i) % 4];
        }
    }

    #[test]
    fn matches_naive_for_all_offsets_and_lengths() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for offset in 0..8 {
            for len in 0..40 {
                let src: Vec<u8> = (0..len as u8).collect();
                let mut a = src.clone();
                let mut b = src.clone();
                apply_mask(&mut a, mask, offset);
                naive(&mut b, mask, offset);
                assert_eq!(a, b, "offset {offset} len {len}");
            }
        }
    }
}
