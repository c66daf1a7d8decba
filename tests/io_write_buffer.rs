//! A `StreamWriter`'s buffer stays near its high-water mark under a producer that respects
//! backpressure (`write` then `drain`, as asyncio code does) against a slower reader. Its own
//! test binary, since it counts the process's live heap with a global allocator.

use braid::UnixStream;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The system allocator, counting the bytes live and the most live at once.
struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to `System` unchanged; the counting only reads the sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: `p` came from `System.alloc` or `System.realloc` with this layout.
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is `System.realloc`'s.
        let q = unsafe { System.realloc(p, layout, size) };
        if !q.is_null() {
            if size >= layout.size() {
                grew(size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - size, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// 4 MiB go through a connection whose sender's socket buffer is small and whose reader is
/// slow, 8 KiB per `write` + `drain`: the live heap grows by well under a MiB (the buffer
/// stays near its 64 KiB high-water mark). The buffer used to drop only what it sent once it
/// emptied, which such a writer never lets it do, so it grew by the whole transfer.
#[test]
fn a_writer_that_drains_keeps_its_buffer_near_the_high_water_mark() {
    const TOTAL: usize = 4 << 20;
    const CHUNK: usize = 8 << 10;
    let rt = braid::Runtime::builder().workers(1).build().unwrap();
    let growth = rt
        .run_until_complete(async {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            let size: libc::c_int = 4096;
            // SAFETY: SO_SNDBUF on the open socket `theirs` owns, reading one c_int through a
            // pointer to a live c_int of the size passed.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&theirs),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "SO_SNDBUF: {}", std::io::Error::last_os_error());
            let (reader, _reader_side_writer) = UnixStream::from_std(ours)?.into_streams();
            let (_writer_side_reader, writer) = UnixStream::from_std(theirs)?.into_streams();
            let consumer = braid::create_task(async move {
                let mut got = 0;
                while got < TOTAL {
                    let piece = reader.read(CHUNK).await?;
                    if piece.is_empty() {
                        break;
                    }
                    got += piece.len();
                    braid::sleep(Duration::from_micros(100)).await?; // a slow reader
                }
                Ok(got)
            });
            let chunk = vec![7u8; CHUNK];
            let before = LIVE.load(Ordering::Relaxed);
            PEAK.store(before, Ordering::Relaxed);
            for _ in 0..TOTAL / CHUNK {
                writer.write(&chunk)?;
                writer.drain().await?;
            }
            assert_eq!(consumer.await?, TOTAL);
            Ok(PEAK.load(Ordering::Relaxed).saturating_sub(before))
        })
        .unwrap();
    assert!(
        growth < 1 << 20,
        "the live heap grew by {} KiB for a {} KiB transfer",
        growth >> 10,
        TOTAL >> 10
    );
    rt.shutdown(Duration::from_secs(10)).unwrap();
}
