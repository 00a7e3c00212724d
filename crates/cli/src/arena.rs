//! The allocator of the `plinth` process: the system's, except that a one-shot command can
//! switch to an arena that is never given back.
//!
//! `plinth changed` runs for a few milliseconds and makes about 10,000 small allocations, most
//! of which live until it exits. Through malloc, a quarter of its instructions went to
//! allocating and freeing, and a third of its page faults to the heap growing 4 KiB at a time.
//! From the arena an allocation is a pointer bump, freeing is nothing (the process gives all
//! of it back at once when it exits, as git does with its own), and the arena is asked to be
//! backed by transparent huge pages, so the whole heap of such a run is one page fault.
//!
//! Long-running commands (the server, `deploy`, `exec`) never switch, so they free as usual.
//! The arena is bounded ([`SIZE`]); past that, allocations go to the system allocator again,
//! so a one-shot command on a huge repo costs at most that much more memory than before.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How much address space the arena reserves; only what is used is ever backed by memory.
const SIZE: usize = 64 << 20;
/// Transparent huge pages are 2 MiB on x86-64 and arm64; the arena starts on that boundary.
const HUGE_PAGE: usize = 2 << 20;

/// The system allocator, or an arena once [`Allocator::switch_to_arena`] is called.
#[derive(Debug)]
pub struct Allocator {
    /// The next free address in the arena, or 0 while allocations go to the system.
    next: AtomicUsize,
    /// The arena's bounds; both 0 until `switch_to_arena` sets them (before `next`).
    start: AtomicUsize,
    end: AtomicUsize,
}

impl Allocator {
    pub const fn new() -> Self {
        Self { next: AtomicUsize::new(0), start: AtomicUsize::new(0), end: AtomicUsize::new(0) }
    }

    /// From now on, allocations come from the arena, and freeing them does nothing. For
    /// commands that exit within moments of their start. If the address space cannot be
    /// reserved, the system allocator stays in use. Call it once, before other threads start.
    #[cfg(target_os = "linux")]
    #[expect(unsafe_code, reason = "reserving the arena's address space is an mmap call")]
    pub fn switch_to_arena(&self) {
        use rustix::mm::{Advice, MapFlags, ProtFlags, madvise, mmap_anonymous};
        if self.start.load(Ordering::Acquire) != 0 {
            return;
        }
        // SAFETY: a new private anonymous mapping, at an address of the kernel's choosing, that
        // nothing else refers to; it is never unmapped, so pointers into it stay valid.
        let Ok(base) = (unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                SIZE + HUGE_PAGE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }) else {
            return;
        };
        let start = (base as usize).next_multiple_of(HUGE_PAGE);
        // SAFETY: the range lies inside the mapping made above. A refusal (no THP in this
        // kernel) only means 4 KiB pages.
        let _ = unsafe { madvise(start as *mut std::ffi::c_void, SIZE, Advice::LinuxHugepage) };
        self.start.store(start, Ordering::Release);
        self.end.store(start + SIZE, Ordering::Release);
        self.next.store(start, Ordering::Release);
    }

    #[cfg(not(target_os = "linux"))]
    pub fn switch_to_arena(&self) {}

    fn in_arena(&self, ptr: *mut u8) -> bool {
        let addr = ptr as usize;
        addr >= self.start.load(Ordering::Relaxed) && addr < self.end.load(Ordering::Relaxed)
    }

    /// Takes `layout` from the arena, or `None` when the arena is off or full.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        let mut next = self.next.load(Ordering::Acquire);
        loop {
            if next == 0 {
                return None;
            }
            let start = next.checked_next_multiple_of(layout.align())?;
            let end = start.checked_add(layout.size())?;
            if end > self.end.load(Ordering::Relaxed) {
                return None;
            }
            match self.next.compare_exchange_weak(next, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(start as *mut u8),
                Err(current) => next = current,
            }
        }
    }
}

// SAFETY: every pointer handed out is either the system allocator's (and goes back to it) or a
// distinct, suitably aligned range of the arena, which is never unmapped or handed out twice:
// `next` only moves forward.
#[expect(unsafe_code, reason = "a global allocator is an unsafe trait")]
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => ptr,
            // SAFETY: the caller's promises about `layout` are passed on unchanged.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            // Arena memory past `next` has never been handed out, so it is still the zeroes of
            // a fresh anonymous mapping.
            Some(ptr) => ptr,
            // SAFETY: as in `alloc`.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.in_arena(ptr) {
            // SAFETY: not an arena pointer, so the system allocator handed it out.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.in_arena(ptr) {
            // SAFETY: the system allocator handed `ptr` out.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // The most recent allocation grows in place, as a `Vec` being filled usually is.
        let old_end = ptr as usize + layout.size();
        if let Some(new_end) = (ptr as usize).checked_add(new_size)
            && new_end <= self.end.load(Ordering::Relaxed)
            && self.next.compare_exchange(old_end, new_end, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return ptr;
        }
        // SAFETY: `new_size` is non-zero and, rounded to the alignment, fits `isize` (the
        // caller's promise); the old block stays readable, since arena memory is never reused.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size());
            }
            new
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
#[expect(unsafe_code, reason = "the tests call the allocator as the standard library would")]
mod tests {
    use super::*;

    /// A private arena, so the test process keeps its own allocator.
    fn arena() -> Allocator {
        let arena = Allocator::new();
        arena.switch_to_arena();
        assert_ne!(arena.start.load(Ordering::Relaxed), 0, "the arena was not reserved");
        arena
    }

    #[test]
    fn before_the_switch_everything_goes_to_the_system() {
        let allocator = Allocator::new();
        let layout = Layout::from_size_align(64, 8).unwrap();
        unsafe {
            let ptr = allocator.alloc(layout);
            assert!(!ptr.is_null());
            assert!(!allocator.in_arena(ptr));
            ptr.write_bytes(7, 64);
            let ptr = allocator.realloc(ptr, layout, 4096);
            assert_eq!(*ptr.add(63), 7);
            allocator.dealloc(ptr, Layout::from_size_align(4096, 8).unwrap());
        }
    }

    #[test]
    fn allocations_are_aligned_distinct_and_zeroed_when_asked() {
        let arena = arena();
        let mut blocks: Vec<(usize, usize)> = Vec::new();
        for (size, align) in [(1, 1), (3, 2), (24, 8), (100, 64), (5, 4096), (17, 16)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let ptr = unsafe { arena.alloc_zeroed(layout) };
            assert!(arena.in_arena(ptr), "{size} bytes aligned to {align} came from the system");
            assert_eq!(ptr as usize % align, 0, "{size} bytes are not aligned to {align}");
            let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, size) };
            assert!(bytes.iter().all(|&b| b == 0), "alloc_zeroed handed out dirty memory");
            bytes.fill(0xAA);
            blocks.push((ptr as usize, size));
        }
        blocks.sort();
        for pair in blocks.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "blocks overlap: {pair:?}");
        }
    }

    #[test]
    fn the_last_block_grows_in_place_and_an_earlier_one_is_copied() {
        let arena = arena();
        let layout = Layout::from_size_align(16, 8).unwrap();
        unsafe {
            let first = arena.alloc(layout);
            first.write_bytes(1, 16);
            let grown = arena.realloc(first, layout, 4000);
            assert_eq!(grown, first, "the most recent block should grow where it is");
            let layout = Layout::from_size_align(4000, 8).unwrap();

            let second = arena.alloc(Layout::from_size_align(8, 8).unwrap());
            let moved = arena.realloc(first, layout, 8000);
            assert_ne!(moved, first, "a block with another after it cannot grow in place");
            assert!(moved as usize >= second as usize + 8, "the copy overlaps a later block");
            assert!((0..16).all(|i| *moved.add(i) == 1), "growing lost the block's contents");

            let shrunk = arena.realloc(moved, Layout::from_size_align(8000, 8).unwrap(), 10);
            assert_eq!(shrunk, moved);
            arena.dealloc(shrunk, Layout::from_size_align(10, 8).unwrap());
        }
    }

    #[test]
    fn a_full_arena_hands_over_to_the_system() {
        let arena = arena();
        let too_big = Layout::from_size_align(SIZE + 1, 8).unwrap();
        let small = Layout::from_size_align(32, 8).unwrap();
        unsafe {
            let big = arena.alloc(too_big);
            assert!(!big.is_null());
            assert!(!arena.in_arena(big), "more than the arena holds came from the arena");
            // The system's block goes back to the system; the arena still serves small blocks.
            arena.dealloc(big, too_big);
            let ptr = arena.alloc(small);
            assert!(arena.in_arena(ptr));
            // A block in the arena that outgrows it moves to the system, contents and all.
            ptr.write_bytes(9, 32);
            let moved = arena.realloc(ptr, small, SIZE + 1);
            assert!(!moved.is_null() && !arena.in_arena(moved));
            assert!((0..32).all(|i| *moved.add(i) == 9));
            arena.dealloc(moved, too_big);
        }
    }

    #[test]
    fn threads_allocating_at_once_get_disjoint_blocks() {
        let arena = arena();
        let layout = Layout::from_size_align(48, 16).unwrap();
        let blocks: Vec<Vec<usize>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4u8)
                .map(|n| {
                    let arena = &arena;
                    scope.spawn(move || {
                        (0..2000)
                            .map(|_| unsafe {
                                let ptr = arena.alloc(layout);
                                ptr.write_bytes(n, 48);
                                ptr as usize
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for (n, own) in blocks.iter().enumerate() {
            for &addr in own {
                let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, 48) };
                assert!(bytes.iter().all(|&b| b == n as u8), "another thread wrote into {addr:#x}");
            }
        }
        let mut all: Vec<usize> = blocks.concat();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 8000, "two threads were handed the same block");
    }
}
