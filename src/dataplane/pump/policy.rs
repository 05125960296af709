//! The one rule both pumps follow for a session direction: when it waits holding as little as
//! possible, when it reads into a large buffer, and when it splices.
//!
//! A direction is *quiet* until a read fills its buffer. A busy direction reads into a large
//! buffer or, with splice on, moves what is queued with splice(2); it turns quiet again when a
//! read or a splice burst comes back short. Pure: no I/O, no clock. The pumps map `Next::Wait` to
//! what their backend can do: epoll waits for readiness holding no buffer, io_uring receives into
//! a provided buffer the kernel picks when bytes arrive (or, without buffer rings, parks a small
//! read); it learns of new bytes only through a read, so a splice burst is always followed by a
//! wait.

/// A small pooled buffer: a quiet message this short is kept in one; a quiet io_uring direction
/// without provided buffers parks a read of this size, and a read that fills it turns the
/// direction busy. Most request/response messages fit.
pub const SMALL_BUFFER_BYTES: usize = 512;

/// What a direction does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Wait for bytes holding as little as the backend allows.
    Wait,
    /// Read again into a large buffer: bytes are flowing.
    ReadLarge,
    /// Move what is queued with splice(2) through a pipe.
    Splice,
}

/// The policy of one worker's directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectionPolicy {
    large_bytes: usize,
    splice: bool,
}

impl DirectionPolicy {
    /// Busy directions read into buffers of `large_bytes` (at least twice the small size), and
    /// splice when `splice` is on.
    pub fn new(large_bytes: usize, splice: bool) -> Self {
        Self {
            large_bytes: large_bytes.max(SMALL_BUFFER_BYTES * 2),
            splice,
        }
    }

    /// Size of a busy direction's buffer.
    pub fn large_bytes(&self) -> usize {
        self.large_bytes
    }

    /// Whether busy directions splice.
    pub fn splices(&self) -> bool {
        self.splice
    }

    /// After a read of `n` bytes (not EOF) into a buffer of `capacity`.
    pub fn after_read(&self, n: usize, capacity: usize) -> Next {
        let full = n >= capacity;
        if full && capacity >= self.large_bytes {
            if self.splice {
                Next::Splice
            } else {
                Next::ReadLarge
            }
        } else if full {
            // A small buffer filled: bytes are flowing.
            Next::ReadLarge
        } else if self.splice || n < SMALL_BUFFER_BYTES {
            // The socket ran empty. With splice on, a later burst's bulk goes through the pipe,
            // not a buffer, so any short read ends the busy spell.
            Next::Wait
        } else {
            Next::ReadLarge
        }
    }

    /// After a splice burst moved `moved` bytes and the source had nothing more: a burst of at
    /// least a buffer's worth keeps the direction splicing.
    pub fn after_splice(&self, moved: u64) -> Next {
        if moved >= self.large_bytes as u64 {
            Next::Splice
        } else {
            Next::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LARGE: usize = 64 * 1024;

    #[test]
    fn a_quiet_direction_stays_quiet_on_short_reads() {
        for splice in [false, true] {
            let p = DirectionPolicy::new(LARGE, splice);
            assert_eq!(p.after_read(100, SMALL_BUFFER_BYTES), Next::Wait);
        }
    }

    #[test]
    fn a_filled_small_buffer_turns_the_direction_busy() {
        for splice in [false, true] {
            let p = DirectionPolicy::new(LARGE, splice);
            assert_eq!(
                p.after_read(SMALL_BUFFER_BYTES, SMALL_BUFFER_BYTES),
                Next::ReadLarge
            );
        }
    }

    #[test]
    fn a_filled_large_buffer_splices_when_splice_is_on() {
        assert_eq!(
            DirectionPolicy::new(LARGE, true).after_read(LARGE, LARGE),
            Next::Splice
        );
        assert_eq!(
            DirectionPolicy::new(LARGE, false).after_read(LARGE, LARGE),
            Next::ReadLarge
        );
    }

    #[test]
    fn a_short_large_read_ends_the_busy_spell_only_when_small_or_splicing() {
        let copy = DirectionPolicy::new(LARGE, false);
        assert_eq!(copy.after_read(10_000, LARGE), Next::ReadLarge);
        assert_eq!(copy.after_read(100, LARGE), Next::Wait);
        let splice = DirectionPolicy::new(LARGE, true);
        assert_eq!(splice.after_read(10_000, LARGE), Next::Wait);
    }

    #[test]
    fn splicing_goes_on_while_bursts_move_a_buffer_or_more() {
        let p = DirectionPolicy::new(LARGE, true);
        assert_eq!(p.after_splice(LARGE as u64), Next::Splice);
        assert_eq!(p.after_splice(LARGE as u64 - 1), Next::Wait);
    }

    #[test]
    fn large_buffers_are_never_smaller_than_two_small_ones() {
        assert_eq!(
            DirectionPolicy::new(100, false).large_bytes(),
            SMALL_BUFFER_BYTES * 2
        );
    }
}
