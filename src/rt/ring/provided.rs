//! A worker ring's provided buffers (`IORING_REGISTER_PBUF_RING`, Linux 5.19): a receive that
//! holds no buffer of its own names this group, and the kernel picks one of its buffers only
//! when bytes arrive. So a quiet socket's wait costs no memory, and a message up to a buffer's
//! size is taken in one receive whatever its length.
//!
//! The group is one allocation of `count` buffers of `size` bytes and the ring of entries the
//! kernel takes them from. A buffer the kernel filled is out of the ring until it is recycled
//! (its bytes copied out first); the ring runs dry when every buffer is out, and a receive then
//! fails with `ENOBUFS` (the caller waits another way). Used by one thread, its ring's; the
//! memory is freed only once the ring holds no operation that could still write to it. This
//! module must not know about sockets or sessions.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::{cqueue, IoUring};

use super::driver::Driver;

/// Buffers per worker: enough for every quiet socket a turn's completions fill at once under
/// hundreds of connections (one out per completion until its task copies it).
pub const PROVIDED_COUNT: u16 = 256;
/// Bytes per buffer: most request/response messages fit (a longer one's rest is read at once,
/// without waiting, by the caller).
pub const PROVIDED_BUFFER_BYTES: u32 = 4096;
/// The buffer group id (one group per ring).
pub const GROUP_ID: u16 = 0;

/// The buffers and the ring of entries the kernel takes them from.
pub(super) struct ProvidedBuffers {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    buffers: *mut u8,
    buffers_layout: Layout,
    count: u16,
    size: u32,
    /// The next tail to publish (the kernel reads it; only this thread writes it).
    tail: Cell<u16>,
}

impl ProvidedBuffers {
    /// Allocates the group with every buffer in the ring; register it with
    /// [`ProvidedBuffers::ring_addr`] before any receive names it.
    pub(super) fn new(count: u16, size: u32) -> io::Result<Self> {
        if !count.is_power_of_two() || size == 0 {
            return Err(io::Error::other(
                "provided buffers: count must be a power of two, size above 0",
            ));
        }
        let page = 4096;
        let entries_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            page,
        )
        .map_err(io::Error::other)?;
        let buffers_layout = Layout::from_size_align(usize::from(count) * size as usize, page)
            .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size.
        let entries = unsafe { alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        // SAFETY: as above. Zeroed pages are not touched (resident) until the kernel writes them.
        let buffers = unsafe { alloc_zeroed(buffers_layout) };
        if buffers.is_null() {
            // SAFETY: allocated just above with this layout.
            unsafe { dealloc(entries.cast(), entries_layout) };
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let group = Self {
            entries,
            entries_layout,
            buffers,
            buffers_layout,
            count,
            size,
            tail: Cell::new(0),
        };
        for bid in 0..count {
            group.put(bid);
        }
        group.publish();
        Ok(group)
    }

    /// The ring's address, for `register_buf_ring`.
    pub(super) fn ring_addr(&self) -> u64 {
        self.entries as u64
    }

    pub(super) fn count(&self) -> u16 {
        self.count
    }

    pub(super) fn size(&self) -> u32 {
        self.size
    }

    /// The first `len` bytes of buffer `bid` (filled by a completed receive).
    ///
    /// # Safety
    /// `bid` must be out of the ring (taken by a completion and not yet recycled), so the kernel
    /// does not write it meanwhile.
    pub(super) unsafe fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let bid = bid % self.count;
        let len = len.min(self.size as usize);
        // SAFETY: inside the allocation; the caller vouches that nothing writes it meanwhile.
        unsafe {
            std::slice::from_raw_parts(self.buffers.add(usize::from(bid) * self.size as usize), len)
        }
    }

    /// Puts buffer `bid` back in the ring for the kernel to fill again.
    pub(super) fn recycle(&self, bid: u16) {
        if bid < self.count {
            self.put(bid);
            self.publish();
        }
    }

    fn put(&self, bid: u16) {
        let tail = self.tail.get();
        let index = usize::from(tail & (self.count - 1));
        // SAFETY: `index` < count, inside the entries allocation; the kernel reads entries only
        // below the published tail, and this one is at or past it.
        let entry = unsafe { &mut *self.entries.add(index) };
        // SAFETY: inside the buffers allocation.
        let addr = unsafe { self.buffers.add(usize::from(bid) * self.size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail.set(tail.wrapping_add(1));
    }

    /// Makes the entries put so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: the ring's base is entry 0 of a live allocation; its tail field is a u16 the
        // kernel reads (acquire) and only this thread writes.
        let tail = unsafe { &*BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail.get(), Ordering::Release);
    }

    /// Frees the memory. Only once the group is unregistered, or its ring is gone with no
    /// operation in flight.
    pub(super) fn free(self) {
        // SAFETY: allocated in `new` with these layouts; the caller vouches the kernel is done.
        unsafe {
            dealloc(self.entries.cast(), self.entries_layout);
            dealloc(self.buffers, self.buffers_layout);
        }
    }
}

impl Driver {
    /// The provided-buffer group quiet receives name, and its buffers' size; `None` where the
    /// kernel has no buffer rings.
    pub(super) fn provided_group(&self) -> Option<(u16, u32)> {
        self.provided.as_ref().map(|g| (GROUP_ID, g.size()))
    }

    /// The first `len` bytes of provided buffer `bid`.
    ///
    /// # Safety
    /// `bid` must have come with a completion and not been recycled since.
    pub(super) unsafe fn provided_bytes(&self, bid: u16, len: usize) -> &[u8] {
        match &self.provided {
            // SAFETY: the caller vouches for `bid`.
            Some(g) => unsafe { g.bytes(bid, len) },
            None => &[],
        }
    }

    /// Puts provided buffer `bid` back for the kernel.
    pub(super) fn recycle(&self, bid: u16) {
        if let Some(g) = &self.provided {
            g.recycle(bid);
        }
    }

    /// A completion nobody takes: its provided buffer, if it got one, goes back.
    pub(super) fn recycle_of(&self, flags: u32) {
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.recycle(bid);
        }
    }
}

/// The provided-buffer group, registered on `ring`; `None` where the kernel refuses buffer rings
/// (before Linux 5.19) or the memory cannot be had.
pub(super) fn register_provided(ring: &IoUring) -> Option<ProvidedBuffers> {
    let group = ProvidedBuffers::new(PROVIDED_COUNT, PROVIDED_BUFFER_BYTES).ok()?;
    // SAFETY: the ring of entries is page-aligned and lives until the group is unregistered, or
    // (leaked) past the ring when operations are still in flight at its end (`Drop`).
    match unsafe {
        ring.submitter()
            .register_buf_ring(group.ring_addr(), group.count(), GROUP_ID)
    } {
        Ok(()) => Some(group),
        Err(e) => {
            tracing::debug!("no io_uring provided-buffer ring ({e}): quiet reads park a buffer");
            group.free();
            None
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let Some(group) = self.provided.take() else {
            return;
        };
        if self.in_flight.get() == 0 {
            let _ = self
                .ring
                .get_mut()
                .submitter()
                .unregister_buf_ring(GROUP_ID);
            group.free();
        }
        // Else leaked: an operation still in flight could write into a buffer.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_buffer_starts_in_the_ring_and_recycling_advances_the_tail() {
        let group = ProvidedBuffers::new(4, 64).unwrap();
        assert_eq!(group.tail.get(), 4);
        group.recycle(2);
        assert_eq!(group.tail.get(), 5);
        // A bid the group never had is ignored.
        group.recycle(9);
        assert_eq!(group.tail.get(), 5);
        // SAFETY: no kernel here.
        let bytes = unsafe { group.bytes(2, 10_000) };
        assert_eq!(bytes.len(), 64);
        group.free();
    }

    #[test]
    fn a_count_that_is_not_a_power_of_two_is_refused() {
        assert!(ProvidedBuffers::new(3, 64).is_err());
        assert!(ProvidedBuffers::new(4, 0).is_err());
    }
}
