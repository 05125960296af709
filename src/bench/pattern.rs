//! The deterministic byte pattern that load streams carry, so the far end can verify every byte.
//!
//! Byte `offset` of stream `stream` is `base[(offset + phase(stream)) % PERIOD]`, where `base` is a
//! fixed pseudo-random table of a prime length. Sending is zero-copy (a slice of a prebuilt
//! buffer) and checking is a `memcmp`. A lost, duplicated or reordered run of bytes is detected
//! unless its length is a multiple of [`PERIOD`] (65,521, odd, so never a power-of-two chunk);
//! bytes from another stream are detected because every stream starts at a different phase.
//! This module does no I/O.

/// Length of the repeating table: the largest prime below 2^16.
pub const PERIOD: usize = 65_521;

/// A byte that differs from the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Offset of the byte in the stream.
    pub offset: u64,
    pub expected: u8,
    pub got: u8,
}

/// The pattern table, extended so that any window of up to `max_chunk` bytes is contiguous.
#[derive(Debug)]
pub struct Pattern {
    ext: Vec<u8>,
    max_chunk: usize,
}

impl Pattern {
    /// A pattern whose slices can be up to `max_chunk` bytes long.
    pub fn new(max_chunk: usize) -> Self {
        let max_chunk = max_chunk.max(1);
        let mut base = Vec::with_capacity(PERIOD);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while base.len() < PERIOD {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            base.extend_from_slice(&x.to_le_bytes()[..(PERIOD - base.len()).min(8)]);
        }
        let mut ext = Vec::with_capacity(PERIOD + max_chunk);
        while ext.len() < PERIOD + max_chunk {
            let take = (PERIOD + max_chunk - ext.len()).min(PERIOD);
            ext.extend_from_slice(&base[..take]);
        }
        Self { ext, max_chunk }
    }

    /// Longest slice [`Pattern::slice`] can return.
    pub fn max_chunk(&self) -> usize {
        self.max_chunk
    }

    fn start(stream: u64, offset: u64) -> usize {
        let phase = stream.wrapping_mul(7_919) % PERIOD as u64;
        ((offset % PERIOD as u64 + phase) % PERIOD as u64) as usize
    }

    /// The `len` pattern bytes of `stream` starting at `offset`. `len` is capped at `max_chunk`.
    pub fn slice(&self, stream: u64, offset: u64, len: usize) -> &[u8] {
        let start = Self::start(stream, offset);
        &self.ext[start..start + len.min(self.max_chunk)]
    }

    /// The byte of `stream` at `offset`.
    pub fn byte(&self, stream: u64, offset: u64) -> u8 {
        self.ext[Self::start(stream, offset)]
    }

    /// Checks that `data` is the pattern of `stream` from `offset` on; reports the first wrong byte.
    pub fn check(&self, stream: u64, offset: u64, data: &[u8]) -> Result<(), Mismatch> {
        let mut done = 0usize;
        while done < data.len() {
            let part = &data[done..(done + self.max_chunk).min(data.len())];
            let at = offset + done as u64;
            let expected = self.slice(stream, at, part.len());
            if part != expected {
                // Only on failure: find the byte.
                let i = part
                    .iter()
                    .zip(expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(Mismatch {
                    offset: at + i as u64,
                    expected: expected[i],
                    got: part[i],
                });
            }
            done += part.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_is_prime() {
        let p = PERIOD as u64;
        assert!((2..=((p as f64).sqrt() as u64)).all(|d| p % d != 0));
    }

    #[test]
    fn slices_agree_with_bytes_across_the_wrap() {
        let pat = Pattern::new(1000);
        for stream in [0u64, 1, 7, 12_345] {
            let off = PERIOD as u64 * 3 - 17;
            let s = pat.slice(stream, off, 1000);
            for (i, b) in s.iter().enumerate() {
                assert_eq!(*b, pat.byte(stream, off + i as u64));
            }
            assert!(pat.check(stream, off, s).is_ok());
        }
    }

    #[test]
    fn check_names_the_first_wrong_byte() {
        let pat = Pattern::new(64);
        let mut data: Vec<u8> = (0..300).map(|i| pat.byte(3, 1000 + i)).collect();
        data[201] ^= 0x40;
        let m = pat.check(3, 1000, &data).unwrap_err();
        assert_eq!(m.offset, 1201);
        assert_eq!(m.got, m.expected ^ 0x40);
    }

    #[test]
    fn streams_and_shifts_differ() {
        let pat = Pattern::new(256);
        assert_ne!(pat.slice(0, 0, 256), pat.slice(1, 0, 256));
        assert_ne!(pat.slice(0, 0, 256), pat.slice(0, 1, 256));
    }
}
