//! asyncio's streams on braid (API.md "Streams and sockets", issue 5): `StreamReader`'s
//! `read(n)`, `read_to_end`, `readline`, `readexactly`, `readuntil`, `at_eof` and its limit;
//! `IncompleteRead` and `LimitOverrun`; one read at a time (`InvalidState` for a second one);
//! cancel-safety (a read cancelled part-way leaves its bytes for the next one); and
//! `StreamWriter`'s `write`, `writelines`, `drain` with backpressure, `write_eof`, `close`,
//! `wait_closed`, addresses, and `open_connection`/`open_unix_connection`.
//!
//! Scenarios are ported from CPython 3.13's `Lib/test/test_asyncio/test_streams.py`; each test
//! names the one it follows. CPython feeds a bare `StreamReader` with `feed_data`; here the
//! reader sits on one end of a Unix socket pair and a [`Feeder`] writes to the other end with
//! blocking std writes (small ones never block). Where CPython's chunking matters (a separator
//! split across chunks) the feeder waits until the reader has taken each chunk out of the
//! socket (`SIOCOUTQ`, the bytes the peer has not read yet, reaches 0) before sending the next.
//! CPython inspects `stream._buffer`; here what is buffered is read back instead. Every
//! scenario runs on a 1-loop and on a 2-loop runtime.

use braid::{ErrorKind, Result, StreamReader, StreamWriter, TcpListener, UnixStream};
use braid::{IncompleteRead, LimitOverrun, DEFAULT_LIMIT};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// The runtime sizes every scenario runs on.
const LOOPS: [usize; 2] = [1, 2];

/// CPython's `self.DATA`.
const DATA: &[u8] = b"line1\nline2\nline3\n";

/// The far end of a stream under test.
struct Feeder {
    sock: std::os::unix::net::UnixStream,
}

impl Feeder {
    /// Sends `data` (CPython's `feed_data`).
    fn feed(&self, data: &[u8]) {
        (&self.sock).write_all(data).expect("feed the stream");
    }

    /// Ends the stream (CPython's `feed_eof`).
    fn feed_eof(&self) {
        self.sock.shutdown(Shutdown::Write).expect("feed EOF");
    }

    /// Bytes sent that the reader has not taken out of the socket yet.
    fn unread(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) on a socket writes one c_int through the pointer, which
        // points to a live c_int; the descriptor is owned by `self.sock` and open.
        let rc = unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        assert_eq!(rc, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
        n as usize
    }

    /// Sends `data` as a chunk of its own: waits until a reader waiting on the stream has
    /// taken it out of the socket, so the next chunk arrives separately.
    async fn feed_chunk(&self, data: &[u8]) -> Result<()> {
        self.feed(data);
        let started = Instant::now();
        while self.unread() > 0 {
            assert!(
                started.elapsed() < WAIT,
                "the reader did not take {data:?} out of the socket"
            );
            braid::sleep(Duration::from_millis(1)).await?;
        }
        Ok(())
    }

    /// Everything the stream's writer sent until it closed or wrote EOF (a blocking read: only
    /// for small amounts already sent).
    fn received(&self) -> Vec<u8> {
        let mut got = Vec::new();
        (&self.sock)
            .read_to_end(&mut got)
            .expect("read the writer's data");
        got
    }
}

/// A stream pair over a Unix socket and the feeder at its other end. Keep the writer: dropping
/// it closes the connection.
fn stream() -> Result<(Arc<StreamReader>, StreamWriter, Feeder)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let (reader, writer) = UnixStream::from_std(ours)?.into_streams();
    Ok((Arc::new(reader), writer, Feeder { sock: theirs }))
}

/// Awaits a stream read with a bound.
async fn within<T>(op: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    braid::wait_for(op, Some(WAIT)).await
}

/// The `LimitOverrun` in `outcome`, which must be that error (kind `Other`).
fn overrun<T: std::fmt::Debug>(outcome: Result<T>) -> LimitOverrun {
    match outcome {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Other, "{e:?}");
            e.downcast_ref::<LimitOverrun>()
                .unwrap_or_else(|| panic!("expected LimitOverrun, got {e:?}"))
                .clone()
        }
        Ok(v) => panic!("expected LimitOverrun, got {v:?}"),
    }
}

/// The `IncompleteRead` in `outcome`, which must be that error (kind `Io`).
fn incomplete<T: std::fmt::Debug>(outcome: Result<T>) -> (IncompleteRead, String) {
    match outcome {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Io, "{e:?}");
            let inc = e
                .downcast_ref::<IncompleteRead>()
                .unwrap_or_else(|| panic!("expected IncompleteRead, got {e:?}"))
                .clone();
            (inc, e.to_string())
        }
        Ok(v) => panic!("expected IncompleteRead, got {v:?}"),
    }
}

/// The stream types are `Send + Sync` (a handler moves them into tasks on any loop).
#[test]
fn stream_types_are_send_sync() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<StreamReader>();
    check::<StreamWriter>();
    check::<braid::Server>();
    check::<IncompleteRead>();
    check::<LimitOverrun>();
}

/// CPython `test_invalid_limit`: a limit of 0 is refused.
#[test]
#[should_panic(expected = "a stream limit must be positive")]
fn a_zero_limit_is_refused() {
    let (a, _b) = UnixStream::pair().unwrap();
    let (reader, _writer) = a.into_streams();
    assert_eq!(reader.limit(), DEFAULT_LIMIT);
    reader.set_limit(0);
}

/// CPython `test_read_zero`: `read(0)` returns nothing at once, with or without data, and
/// leaves the buffer alone.
#[test]
fn read_zero() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        assert_eq!(within(r.read(0)).await?, b"", "no data yet: still at once");
        feeder.feed(DATA);
        // Pull the data into the buffer, then read(0) must leave it there.
        assert_eq!(within(r.read(1)).await?, b"l");
        assert_eq!(within(r.read(0)).await?, b"");
        assert_eq!(within(r.read(DATA.len())).await?, &DATA[1..]);
        Ok(())
    });
}

/// CPython `test_read`: a waiting `read(30)` gets the data fed after it started.
#[test]
fn read_waits_for_data() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        let reader = r.clone();
        let task = queued(async move { reader.read(30).await }).await?;
        feeder.feed(DATA);
        assert_eq!(settle(task).await?, DATA);
        Ok(())
    });
}

/// CPython `test_read_line_breaks`: `read(n)` returns at most `n` bytes, newline or not.
#[test]
fn read_line_breaks() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        feeder.feed(b"line1");
        feeder.feed(b"line2");
        assert_eq!(within(r.read(5)).await?, b"line1");
        assert_eq!(within(r.read(5)).await?, b"line2");
        Ok(())
    });
}

/// CPython `test_read_eof`: a waiting `read` returns empty at EOF, and so does every later
/// read; `at_eof` is then true.
#[test]
fn read_eof() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        let reader = r.clone();
        let task = queued(async move { reader.read(1024).await }).await?;
        feeder.feed_eof();
        assert_eq!(settle(task).await?, b"");
        assert!(r.at_eof());
        assert_eq!(within(r.read(1024)).await?, b"");
        assert_eq!(within(r.read_to_end()).await?, b"");
        Ok(())
    });
}

/// CPython `test_read_until_eof`: `read_to_end` (asyncio's `read(-1)`) collects every chunk
/// until EOF.
#[test]
fn read_until_eof() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        let reader = r.clone();
        let task = queued(async move { reader.read_to_end().await }).await?;
        feeder.feed_chunk(b"chunk1\n").await?;
        feeder.feed_chunk(b"chunk2").await?;
        feeder.feed_eof();
        assert_eq!(settle(task).await?, b"chunk1\nchunk2");
        assert!(r.at_eof());
        Ok(())
    });
}

/// CPython `test_read_limit`: the limit does not apply to `read(n)`.
#[test]
fn read_ignores_the_limit() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        r.set_limit(3);
        assert_eq!(r.limit(), 3);
        feeder.feed(b"chunk");
        assert_eq!(within(r.read(5)).await?, b"chunk");
        Ok(())
    });
}

/// CPython `test_readline`: a line fed in pieces after `readline` started; the data after the
/// newline stays buffered.
#[test]
fn readline_assembles_pieces() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        feeder.feed(b"chunk1 ");
        let reader = r.clone();
        let task = queued(async move { reader.readline().await }).await?;
        feeder.feed_chunk(b"chunk2 ").await?;
        feeder.feed_chunk(b"chunk3 ").await?;
        feeder.feed_chunk(b"\n chunk4").await?;
        assert_eq!(settle(task).await?, b"chunk1 chunk2 chunk3 \n");
        assert_eq!(within(r.read(100)).await?, b" chunk4");
        Ok(())
    });
}

/// CPython `test_readline_limit_with_existing_data`: a line longer than the limit is dropped
/// with its newline and the next line stays; without a newline the whole buffer is dropped.
#[test]
fn readline_limit_with_existing_data() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        r.set_limit(3);
        feeder.feed(b"li");
        feeder.feed(b"ne1\nline2\n");
        let over = overrun(within(r.readline()).await);
        assert_eq!(over.consumed, 5, "the separator was found 5 bytes in");
        // The remaining data: the second line (longer than the limit as well, so read it raw).
        assert_eq!(within(r.read(100)).await?, b"line2\n");

        let (r, _w, feeder) = stream()?;
        r.set_limit(3);
        feeder.feed(b"li");
        feeder.feed(b"ne1");
        feeder.feed(b"li");
        overrun(within(r.readline()).await);
        // No newline: everything buffered was dropped.
        feeder.feed(b"x\n");
        assert_eq!(within(r.readline()).await?, b"x\n");
        Ok(())
    });
}

/// CPython `test_readline_limit`: the same, and the limit is strict (a 7-byte line plus its
/// newline fits a limit of 7; an 8-byte one does not).
#[test]
fn readline_limit() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        r.set_limit(7);
        feeder.feed(b"chunk1");
        feeder.feed(b"chunk2");
        feeder.feed(b"chunk3\n");
        feeder.feed_eof();
        overrun(within(r.readline()).await);
        // The buffer had one line, dropped: nothing is left.
        assert_eq!(within(r.read_to_end()).await?, b"");

        let (r, _w, feeder) = stream()?;
        r.set_limit(7);
        feeder.feed(b"chunk1");
        feeder.feed(b"chunk2\n");
        feeder.feed(b"chunk3\n");
        feeder.feed_eof();
        overrun(within(r.readline()).await);
        assert_eq!(within(r.read_to_end()).await?, b"chunk3\n");

        let (r, _w, feeder) = stream()?;
        r.set_limit(7);
        feeder.feed(b"1234567\n");
        assert_eq!(within(r.readline()).await?, b"1234567\n");
        feeder.feed(b"12345678\n");
        overrun(within(r.readline()).await);
        feeder.feed(b"12345678");
        overrun(within(r.readline()).await);
        feeder.feed_eof();
        assert_eq!(
            within(r.read_to_end()).await?,
            b"",
            "both long lines were dropped"
        );
        Ok(())
    });
}

/// CPython `test_readline_limit` with the long line arriving in chunks while `readline`
/// waits: it fails once the buffered data passes the limit, dropping what it had, and the
/// rest of the long line is then read as a line of its own (what asyncio does too).
#[test]
fn readline_fails_as_soon_as_the_limit_is_passed() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        r.set_limit(7);
        let reader = r.clone();
        let task = queued(async move { reader.readline().await }).await?;
        feeder.feed_chunk(b"chunk1").await?;
        feeder.feed(b"chunk2");
        overrun(settle(task).await);
        feeder.feed(b"tail\nnext\n");
        assert_eq!(within(r.readline()).await?, b"tail\n");
        assert_eq!(within(r.readline()).await?, b"next\n");
        Ok(())
    });
}

/// CPython `test_readline_nolimit_nowait`: lines fed before `readline` are returned one by
/// one.
#[test]
fn readline_nolimit_nowait() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        feeder.feed(&DATA[..6]);
        feeder.feed(&DATA[6..]);
        assert_eq!(within(r.readline()).await?, b"line1\n");
        assert_eq!(within(r.readline()).await?, b"line2\n");
        assert_eq!(within(r.readline()).await?, b"line3\n");
        Ok(())
    });
}

/// CPython `test_readline_eof` and `test_readline_empty_eof`: at EOF `readline` returns the
/// partial line, then empty.
#[test]
fn readline_at_eof() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        feeder.feed(b"some data");
        feeder.feed_eof();
        assert_eq!(within(r.readline()).await?, b"some data");
        assert_eq!(within(r.readline()).await?, b"");

        let (r, _w, feeder) = stream()?;
        feeder.feed_eof();
        assert_eq!(within(r.readline()).await?, b"");
        assert!(r.at_eof());
        Ok(())
    });
}

/// CPython `test_readline_read_byte_count`: `read(n)` after `readline` continues where the
/// line ended.
#[test]
fn readline_read_byte_count() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        feeder.feed(DATA);
        feeder.feed_eof();
        assert_eq!(within(r.readline()).await?, b"line1\n");
        assert_eq!(within(r.read(7)).await?, b"line2\nl");
        assert_eq!(within(r.read_to_end()).await?, b"ine3\n");
        Ok(())
    });
}

/// CPython `test_readexactly_zero_or_less` (the zero case; a negative count cannot be
/// written): `readexactly(0)` returns nothing and leaves the buffer alone.
#[test]
fn readexactly_zero() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        assert_eq!(
            within(r.readexactly(0)).await?,
            b"",
            "at once, without data"
        );
        feeder.feed(DATA);
        assert_eq!(within(r.read(1)).await?, b"l");
        assert_eq!(within(r.readexactly(0)).await?, b"");
        assert_eq!(within(r.readexactly(DATA.len() - 1)).await?, &DATA[1..]);
        Ok(())
    });
}

/// CPython `test_readexactly`: `readexactly(2 * len(DATA))` waits for DATA fed three times,
/// returns two copies, and leaves the third.
#[test]
fn readexactly() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        let n = 2 * DATA.len();
        let reader = r.clone();
        let task = queued(async move { reader.readexactly(n).await }).await?;
        feeder.feed_chunk(DATA).await?;
        feeder.feed(DATA);
        feeder.feed(DATA);
        assert_eq!(settle(task).await?, [DATA, DATA].concat());
        assert_eq!(within(r.readexactly(DATA.len())).await?, DATA);
        Ok(())
    });
}

/// CPython `test_readexactly_limit`: the limit does not apply to `readexactly`.
#[test]
fn readexactly_ignores_the_limit() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        r.set_limit(3);
        feeder.feed(b"chunk");
        assert_eq!(within(r.readexactly(5)).await?, b"chunk");
        Ok(())
    });
}

/// CPython `test_readexactly_eof`: EOF first gives `IncompleteRead` with the partial data and
/// the count asked for, and a message naming both byte counts; the buffer is then empty.
#[test]
fn readexactly_eof() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        let n = 2 * DATA.len();
        let reader = r.clone();
        let task = queued(async move { reader.readexactly(n).await }).await?;
        feeder.feed_chunk(DATA).await?;
        feeder.feed_eof();
        let (inc, message) = incomplete(settle(task).await);
        assert_eq!(inc.partial, DATA);
        assert_eq!(inc.expected, Some(n));
        assert_eq!(message, "18 bytes read on a total of 36 expected bytes");
        assert_eq!(
            within(r.read_to_end()).await?,
            b"",
            "the partial data was taken"
        );
        assert!(r.at_eof());
        Ok(())
    });
}

/// CPython `test_readuntil_separator`: an empty separator is an error (kind `Other`,
/// asyncio's `ValueError`).
#[test]
fn readuntil_empty_separator() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        feeder.feed(DATA);
        let e = within(r.readuntil(b"")).await.expect_err("empty separator");
        assert_eq!(e.kind(), ErrorKind::Other, "{e:?}");
        assert!(e.to_string().contains("separator"), "{e}");
        // The reader is still usable.
        assert_eq!(within(r.readuntil(b"\n")).await?, b"line1\n");
        Ok(())
    });
}

/// CPython `test_readuntil_multi_chunks`: a multi-byte separator at the end of a chunk, then
/// in the middle of one (the rest stays buffered).
#[test]
fn readuntil_multi_chunks() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        feeder.feed(b"lineAAA");
        assert_eq!(within(r.readuntil(b"AAA")).await?, b"lineAAA");
        feeder.feed(b"lineAAA");
        assert_eq!(within(r.readuntil(b"AAA")).await?, b"lineAAA");
        feeder.feed(b"lineAAAxxx");
        assert_eq!(within(r.readuntil(b"AAA")).await?, b"lineAAA");
        assert_eq!(within(r.read(10)).await?, b"xxx");
        Ok(())
    });
}

/// Feeds `chunks` one at a time to a `readuntil(sep)` that is already waiting, each taken out
/// of the socket before the next is sent, and returns what it read.
async fn readuntil_in_chunks(
    r: &Arc<StreamReader>,
    feeder: &Feeder,
    chunks: &[&[u8]],
    sep: &'static [u8],
) -> Result<Vec<u8>> {
    let reader = r.clone();
    let task = queued(async move { reader.readuntil(sep).await }).await?;
    for chunk in chunks {
        feeder.feed_chunk(chunk).await?;
    }
    settle(task).await
}

/// CPython `test_readuntil_multi_chunks_1`, each chunk arriving separately while `readuntil`
/// waits: the separator found across chunk boundaries (split 2+1, 1+2 and 1+1+1).
#[test]
fn readuntil_separator_split_across_chunks() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        let got = readuntil_in_chunks(&r, &feeder, &[b"QWEaa", b"XYaa", b"a"], b"aaa").await?;
        assert_eq!(got, b"QWEaaXYaaa");
        let got = readuntil_in_chunks(&r, &feeder, &[b"QWEaa", b"XYa", b"aa"], b"aaa").await?;
        assert_eq!(got, b"QWEaaXYaaa");
        let got = readuntil_in_chunks(&r, &feeder, &[b"aaa"], b"aaa").await?;
        assert_eq!(got, b"aaa");
        let got = readuntil_in_chunks(&r, &feeder, &[b"Xaaa"], b"aaa").await?;
        assert_eq!(got, b"Xaaa");
        let got = readuntil_in_chunks(&r, &feeder, &[b"XXX", b"a", b"a", b"a"], b"aaa").await?;
        assert_eq!(got, b"XXXaaa");
        // A longer separator split over three chunks, with data after it.
        let got = readuntil_in_chunks(&r, &feeder, &[b"header\r", b"\n\r", b"\nbody"], b"\r\n\r\n")
            .await?;
        assert_eq!(got, b"header\r\n\r\n");
        assert_eq!(within(r.read(10)).await?, b"body");
        Ok(())
    });
}

/// CPython `test_readuntil_eof`: EOF without the separator gives `IncompleteRead` with all
/// the data and no expected count; the buffer is then empty.
#[test]
fn readuntil_eof() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        feeder.feed(b"some dataAA");
        feeder.feed_eof();
        let (inc, message) = incomplete(within(r.readuntil(b"AAA")).await);
        assert_eq!(inc.partial, b"some dataAA");
        assert_eq!(inc.expected, None);
        assert_eq!(
            message,
            "11 bytes read on a total of undefined expected bytes"
        );
        assert_eq!(within(r.read_to_end()).await?, b"");
        Ok(())
    });
}

/// After a `readuntil` that waited for more data and then failed with "separator is found,
/// but chunk is longer than limit", the next `readuntil` (another separator) searches the
/// buffered data from its start, as asyncio's does on every call; it used to go on from
/// where the failed call's search had got to, and skip the earlier matches.
#[test]
fn a_readuntil_after_a_found_overrun_searches_from_the_start() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        r.set_limit(10);
        let until = {
            let r = r.clone();
            braid::create_task(async move { r.readuntil(b"\n").await })
        };
        // The first piece makes the read wait, its search having passed four bytes.
        feeder.feed_chunk(b"aaaa").await?;
        feeder.feed(b"aaaaaaaaaa\n");
        let over = overrun(within(until).await);
        assert!(over.to_string().contains("is found"), "{over}");
        assert_eq!(over.consumed, 14);
        assert_eq!(within(r.readuntil(b"a")).await?, b"a");
        Ok(())
    });
}

/// A `StreamWriter` written from off the loops (a `to_thread` job) with more than the socket
/// takes at once delivers everything: the socket waits on a loop of the runtime it was made
/// in. It used to find no loop to wait on, drop the rest and fail the connection, while
/// `write` returned Ok and the peer waited for good.
#[test]
fn a_writer_used_from_a_thread_pool_job_delivers_everything() {
    on_loops(&LOOPS, || async {
        const SIZE: usize = 4 << 20;
        let (ours, theirs) = UnixStream::pair()?;
        let (reader, _ours_writer) = ours.into_streams();
        let (_theirs_reader, writer) = theirs.into_streams();
        let writer = Arc::new(writer);
        let off_loop = writer.clone();
        braid::to_thread(move || off_loop.write(&vec![1u8; SIZE])).await??;
        let got = within(reader.readexactly(SIZE)).await?;
        assert!(got.iter().all(|&b| b == 1));
        writer.write(b"after")?;
        assert_eq!(within(reader.readexactly(5)).await?, b"after");
        Ok(())
    });
}

/// CPython `test_readuntil_limit_found_sep`: past the limit `readuntil` fails with
/// `LimitOverrun` (separator not found; separator found too far in) and keeps the data; a
/// retry that first reads `consumed` bytes makes progress. (CPython feeds the last `A` into
/// the buffer between the two calls; braid reads the socket only when the buffer cannot
/// answer, so the "found" case gets the data at once here.)
#[test]
fn readuntil_limit_overrun_keeps_the_data() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        r.set_limit(3);
        feeder.feed(b"some dataAA");
        let over = overrun(within(r.readuntil(b"AAA")).await);
        assert!(over.to_string().contains("not found"), "{over}");
        assert_eq!(over.consumed, 9, "9 bytes cannot start the separator");
        // Everything is still buffered: read what cannot be the separator, then retry.
        assert_eq!(within(r.read(over.consumed)).await?, b"some data");
        feeder.feed(b"A");
        assert_eq!(within(r.readuntil(b"AAA")).await?, b"AAA");

        let (r, _w, feeder) = stream()?;
        r.set_limit(3);
        feeder.feed(b"some dataAAA");
        let over = overrun(within(r.readuntil(b"AAA")).await);
        assert!(over.to_string().contains("is found"), "{over}");
        assert_eq!(over.consumed, 9, "the separator starts 9 bytes in");
        assert_eq!(within(r.read(over.consumed)).await?, b"some data");
        assert_eq!(within(r.readuntil(b"AAA")).await?, b"AAA");

        // The default limit: a 100 KiB line overruns it; consumed bytes read, then the rest.
        let (r, _w, feeder) = stream()?;
        let long = vec![b'x'; 100 * 1024];
        feeder.feed(&long);
        feeder.feed(b"\nafter\n");
        let over = overrun(within(r.readuntil(b"\n")).await);
        assert!(over.consumed > DEFAULT_LIMIT, "{over:?}");
        let mut head = Vec::new();
        while head.len() < long.len() {
            let want = (long.len() - head.len()).min(over.consumed);
            head.extend(within(r.readexactly(want)).await?);
        }
        assert!(head == long, "the long line is kept intact");
        assert_eq!(within(r.readuntil(b"\n")).await?, b"\n");
        assert_eq!(within(r.readline()).await?, b"after\n");
        Ok(())
    });
}

/// CPython `test_at_eof`: `at_eof` only once EOF was seen and the buffer is empty.
#[test]
fn at_eof() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        assert!(!r.at_eof());
        feeder.feed(b"some data\n");
        assert!(!r.at_eof());
        assert_eq!(within(r.readline()).await?, b"some data\n");
        assert!(!r.at_eof());
        feeder.feed(b"more");
        feeder.feed_eof();
        assert_eq!(within(r.read(2)).await?, b"mo");
        assert!(!r.at_eof(), "data is still buffered");
        assert_eq!(within(r.readline()).await?, b"re");
        assert!(r.at_eof());
        Ok(())
    });
}

/// asyncio's `_wait_for_data` `RuntimeError`: a read started while another task waits on the
/// same reader fails with `InvalidState`; the waiting read is unaffected.
#[test]
fn a_second_concurrent_read_is_invalid_state() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        let reader = r.clone();
        let waiting = queued(async move { reader.readline().await }).await?;
        for second in [r.read(1), r.readline(), r.readexactly(1), r.read_to_end()] {
            let e = within(second).await.expect_err("a second read");
            assert_eq!(e.kind(), ErrorKind::InvalidState, "{e:?}");
        }
        let e = within(r.readuntil(b"x")).await.expect_err("a second read");
        assert_eq!(e.kind(), ErrorKind::InvalidState, "{e:?}");
        feeder.feed(b"first\nsecond\n");
        assert_eq!(settle(waiting).await?, b"first\n");
        assert_eq!(within(r.readline()).await?, b"second\n", "usable again");
        Ok(())
    });
}

/// A task cancelled in the middle of `readexactly` (4 of 10 bytes buffered) leaves those bytes
/// for the next read: `readexactly(10)` after the rest arrives gets all of them, in order
/// (CPython `test_exception_cancel` checks that a cancelled read leaves no waiter behind).
#[test]
fn a_cancelled_readexactly_keeps_its_bytes() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        let reader = r.clone();
        let task = queued(async move { reader.readexactly(10).await }).await?;
        feeder.feed_chunk(b"0123").await?;
        assert!(task.cancel());
        assert_cancelled(&settle(task).await);
        feeder.feed(b"456789");
        feeder.feed(b"ABCDEF");
        assert_eq!(within(r.readexactly(10)).await?, b"0123456789");
        assert_eq!(within(r.read(100)).await?, b"ABCDEF");
        Ok(())
    });
}

/// The same for `readline` and `readuntil`, cancelled by `wait_for`'s timeout with part of
/// the line (and of a split separator) buffered.
#[test]
fn a_timed_out_readline_or_readuntil_keeps_its_bytes() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        feeder.feed(b"hel");
        let e = braid::wait_for(r.readline(), Some(Duration::from_millis(20)))
            .await
            .expect_err("no newline yet");
        assert!(e.is_timeout(), "{e:?}");
        feeder.feed(b"lo\n");
        assert_eq!(within(r.readline()).await?, b"hello\n");

        feeder.feed(b"key: value\r\n\r");
        let e = braid::wait_for(r.readuntil(b"\r\n\r\n"), Some(Duration::from_millis(20)))
            .await
            .expect_err("the separator is incomplete");
        assert!(e.is_timeout(), "{e:?}");
        feeder.feed(b"\nrest");
        assert_eq!(
            within(r.readuntil(b"\r\n\r\n")).await?,
            b"key: value\r\n\r\n"
        );
        assert_eq!(within(r.read(10)).await?, b"rest");
        Ok(())
    });
}

/// `write` sends at once what the socket takes and buffers the rest, which write readiness
/// flushes without anyone awaiting: 1 MiB written in one call (far more than a Unix socket
/// holds), then `write_eof`, arrives whole while nobody awaits the writer.
#[test]
fn write_buffers_and_flushes_without_awaiting() {
    const LEN: usize = 1 << 20;
    on_loops(&LOOPS, || async {
        let (ours, theirs) = UnixStream::pair()?;
        let (_r, w) = ours.into_streams();
        let (peer, _peer_w) = theirs.into_streams();
        let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        w.write(&data)?;
        assert!(w.buffered() > 0, "a Unix socket cannot take 1 MiB at once");
        assert!(w.can_write_eof());
        w.write_eof()?;
        let got = within(peer.read_to_end()).await?;
        assert!(got == data, "{} bytes arrived, in order", got.len());
        assert_eq!(w.buffered(), 0);
        Ok(())
    });
}

/// `writelines` writes each buffer in turn (CPython's `StreamWriter.writelines`).
#[test]
fn writelines_writes_each_buffer() {
    on_loops(&LOOPS, || async {
        let (_r, w, feeder) = stream()?;
        w.writelines([&b"one\n"[..], b"two\n", b"", b"three\n"])?;
        w.writelines(vec![b"four".to_vec()])?;
        w.write_eof()?;
        let got = braid::to_thread(move || feeder.received()).await?;
        assert_eq!(got, b"one\ntwo\nthree\nfour");
        Ok(())
    });
}

/// A TCP connection whose writer has a high-water mark of `high` bytes and, its peer not
/// reading, holds more than that after the kernel's buffers filled: the writer's reader and
/// writer, the peer's end, and how many bytes were written (`chunk` after `chunk`). A `drain`
/// before any write returns at once.
async fn writer_over_its_high_mark(
    high: usize,
    chunk: &[u8],
) -> Result<(StreamReader, StreamWriter, braid::TcpStream, usize)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let (r, w) = braid::open_connection(listener.local_addr()?).await?;
    let (peer, _) = within(listener.accept()).await?;
    w.set_write_buffer_limits(high);
    within(w.drain()).await?; // nothing buffered: at once
    let mut total = 0;
    while w.buffered() <= high {
        w.write(chunk)?;
        total += chunk.len();
        assert!(
            total < 256 << 20,
            "256 MiB went out while the peer did not read"
        );
    }
    Ok((r, w, peer, total))
}

/// `drain` with backpressure over TCP: with a high-water mark of 4 KiB and a peer that does
/// not read, the buffer goes over the mark and `drain` waits; once the peer reads, `drain`
/// completes with the buffer at or under the low mark (1 KiB), and every byte arrives.
#[test]
fn drain_waits_for_the_peer_to_read() {
    const HIGH: usize = 4096;
    on_loops(&LOOPS, || async {
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
        let (_r, w, peer, total) = writer_over_its_high_mark(HIGH, &chunk).await?;
        let over = w.buffered();
        assert!(over > HIGH);

        let w = Arc::new(w);
        let drainer = w.clone();
        let drain = queued(async move {
            drainer.drain().await?;
            Ok(drainer.buffered())
        })
        .await?;
        assert!(!drain.done());

        let peer_task = braid::create_task(async move {
            let mut buf = vec![0; 64 * 1024];
            let mut got = 0;
            while got < total {
                let n = peer.read(&mut buf).await?;
                assert_ne!(n, 0, "EOF after {got} of {total} bytes");
                for (k, &b) in buf[..n].iter().enumerate() {
                    assert_eq!(b, ((got + k) % (64 * 1024) % 253) as u8, "byte {}", got + k);
                }
                got += n;
            }
            Ok(got)
        });
        let left_when_drained = settle(drain).await?;
        assert!(
            left_when_drained <= HIGH / 4,
            "drain returned with {left_when_drained} bytes buffered"
        );
        assert_eq!(within(peer_task).await?, total);
        assert_eq!(w.buffered(), 0);
        Ok(())
    });
}

/// `write_eof` half-closes: the peer reads EOF but can still write back, and this side still
/// reads; a write after `write_eof` is `InvalidState`.
#[test]
fn write_eof_half_closes() {
    on_loops(&LOOPS, || async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let (r, w) = braid::open_connection(listener.local_addr()?).await?;
        let (server, _) = within(listener.accept()).await?;
        let (sr, sw) = server.into_streams();

        w.write(b"request")?;
        w.write_eof()?;
        let e = w.write(b"more").expect_err("write after write_eof");
        assert_eq!(e.kind(), ErrorKind::InvalidState, "{e:?}");
        assert!(!w.is_closing(), "a half-close is not a close");

        assert_eq!(within(sr.read_to_end()).await?, b"request");
        assert!(sr.at_eof());
        sw.write(b"response")?;
        sw.close();
        assert_eq!(within(r.read_to_end()).await?, b"response");
        Ok(())
    });
}

/// CPython `test_wait_closed_on_close` and `test_async_writer_api_exception_after_close`:
/// `close` sends what is buffered then closes; `wait_closed` returns; `is_closing` is true;
/// a write after `close` is `InvalidState`; `close` again is harmless.
#[test]
fn close_and_wait_closed() {
    on_loops(&LOOPS, || async {
        let (r, w, feeder) = stream()?;
        assert!(!w.is_closing());
        w.write(b"goodbye")?;
        w.close();
        assert!(w.is_closing());
        within(w.wait_closed()).await?;
        let e = w.write(b"late").expect_err("write after close");
        assert_eq!(e.kind(), ErrorKind::InvalidState, "{e:?}");
        w.close();
        within(w.wait_closed()).await?;
        let got = braid::to_thread(move || feeder.received()).await?;
        assert_eq!(got, b"goodbye");
        // Closing closes both directions: this side's reader sees EOF.
        assert_eq!(within(r.read_to_end()).await?, b"");
        assert!(r.at_eof());
        Ok(())
    });
}

/// CPython `test_eof_feed_when_closing_writer`: after `close` and `wait_closed`, the reader of
/// the same connection is at EOF without reading (asyncio's transport feeds EOF to it when
/// the connection is lost).
#[test]
fn reader_is_at_eof_after_the_writer_closed() {
    on_loops(&LOOPS, || async {
        let (r, w, _feeder) = stream()?;
        w.close();
        within(w.wait_closed()).await?;
        assert!(
            r.at_eof(),
            "asyncio: the closed connection fed EOF to its reader"
        );
        assert_eq!(within(r.read(10)).await?, b"");
        Ok(())
    });
}

/// Dropping the writer closes the connection after flushing what it buffered.
#[test]
fn dropping_the_writer_flushes_and_closes() {
    on_loops(&LOOPS, || async {
        let (ours, theirs) = UnixStream::pair()?;
        let (_r, w) = ours.into_streams();
        let (peer, _peer_w) = theirs.into_streams();
        let data: Vec<u8> = (0..500_000).map(|i| (i % 241) as u8).collect();
        w.write(&data)?;
        assert!(w.buffered() > 0);
        drop(w);
        let got = within(peer.read_to_end()).await?;
        assert!(got == data, "{} bytes arrived before EOF", got.len());
        Ok(())
    });
}

/// CPython `test_open_connection`: `open_connection` gives a pair whose `peer_addr` is the
/// listener and whose `local_addr` is what the server sees; a Unix stream has no IP address
/// (`InvalidState`).
#[test]
fn open_connection_and_addresses() {
    on_loops(&LOOPS, || async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let (r, w) = braid::open_connection(listener.local_addr()?).await?;
        let (server, client_addr) = within(listener.accept()).await?;
        assert_eq!(w.peer_addr()?, listener.local_addr()?);
        assert_eq!(w.local_addr()?, client_addr);
        let (sr, sw) = server.into_streams();
        assert_eq!(sw.peer_addr()?, client_addr);

        w.write(b"GET / HTTP/1.0\r\n\r\n")?;
        assert_eq!(
            within(sr.readuntil(b"\r\n\r\n")).await?,
            b"GET / HTTP/1.0\r\n\r\n"
        );
        sw.write(b"HTTP/1.0 200 OK\r\n")?;
        assert_eq!(within(r.readline()).await?, b"HTTP/1.0 200 OK\r\n");

        let (_ur, uw, _feeder) = stream()?;
        for e in [uw.peer_addr().unwrap_err(), uw.local_addr().unwrap_err()] {
            assert_eq!(e.kind(), ErrorKind::InvalidState, "{e:?}");
        }
        Ok(())
    });
}

/// CPython `test_open_unix_connection`: `open_unix_connection` to a `UnixListener`.
#[test]
fn open_unix_connection() {
    let dir = std::env::temp_dir().join(format!("braid-io-streams-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("streams.sock");
    let p = path.clone();
    on_loops(&LOOPS, move || {
        let path = p.clone();
        async move {
            let _ = std::fs::remove_file(&path);
            let listener = braid::UnixListener::bind(&path)?;
            let (r, w) = braid::open_unix_connection(path.clone()).await?;
            let (server, _) = within(listener.accept()).await?;
            let (sr, sw) = server.into_streams();
            w.write(b"ping\n")?;
            assert_eq!(within(sr.readline()).await?, b"ping\n");
            sw.write(b"pong\n")?;
            assert_eq!(within(r.readline()).await?, b"pong\n");
            Ok(())
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls `at_eof` until it is true, for at most [`WAIT`]: it turns true once the loop has seen
/// the peer's end, as asyncio's does once its transport has.
async fn until_at_eof(r: &StreamReader) -> Result<()> {
    let started = Instant::now();
    while !r.at_eof() {
        assert!(
            started.elapsed() < WAIT,
            "at_eof stayed false after the peer's EOF, with nothing buffered"
        );
        braid::sleep(Duration::from_millis(1)).await?;
    }
    Ok(())
}

/// `at_eof` turns true once the peer's end of stream has arrived and nothing is buffered,
/// without a read to take the end in, as asyncio's does once its transport saw it: with
/// nothing sent, and after a read that took everything sent. Looking for the end takes no
/// data away: what came before it stays for the next read. It stayed false until a read
/// returned the end (found by helper-62).
#[test]
fn at_eof_turns_true_once_the_peers_end_arrives_without_a_read() {
    on_loops(&LOOPS, || async {
        let (r, _w, feeder) = stream()?;
        feeder.feed_eof();
        until_at_eof(&r).await?;
        assert_eq!(within(r.read(10)).await?, b"");

        let (r, _w, feeder) = stream()?;
        feeder.feed(b"line\n");
        assert_eq!(within(r.readline()).await?, b"line\n");
        feeder.feed_eof();
        until_at_eof(&r).await?;

        let (r, _w, feeder) = stream()?;
        feeder.feed(b"data");
        feeder.feed_eof();
        for _ in 0..3 {
            assert!(!r.at_eof(), "data came before the end");
            braid::yield_now().await?;
        }
        assert_eq!(within(r.read_to_end()).await?, b"data");
        assert!(r.at_eof());
        Ok(())
    });
}

/// `drain` on a writer whose `close` has closed the connection fails with ConnectionReset
/// (kind Io), as asyncio's raises ConnectionResetError('Connection lost'); `wait_closed` still
/// succeeds, each time, and the peer got what was written. It returned Ok (found by
/// helper-62).
#[test]
fn drain_after_close_fails_with_connection_lost() {
    on_loops(&LOOPS, || async {
        let (_r, w, feeder) = stream()?;
        w.write(b"bye")?;
        w.close();
        for _ in 0..2 {
            let lost = within(w.drain()).await.expect_err("drain after close");
            assert_eq!(lost.kind(), ErrorKind::Io, "{lost:?}");
            let io = lost.downcast_ref::<std::io::Error>().expect("an io::Error");
            assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset, "{lost}");
            within(w.wait_closed()).await?;
        }
        assert_eq!(feeder.received(), b"bye");
        Ok(())
    });
}

/// A `drain` already waiting on backpressure when `close` is called returns Ok once the
/// buffer is sent, as asyncio's does (`connection_lost(None)` completes its waiter); only a
/// `drain` started after the connection closed fails.
#[test]
fn a_drain_waiting_when_the_writer_closes_returns_once_the_buffer_is_sent() {
    const HIGH: usize = 4096;
    on_loops(&LOOPS, || async {
        let (_r, w, peer, total) = writer_over_its_high_mark(HIGH, &[7u8; 64 * 1024]).await?;
        let w = Arc::new(w);
        let drainer = w.clone();
        let drain = queued(async move { drainer.drain().await }).await?;
        w.close();
        let peer_task = braid::create_task(async move {
            let mut buf = vec![0; 64 * 1024];
            let mut got = 0;
            loop {
                let n = peer.read(&mut buf).await?;
                if n == 0 {
                    return Ok(got);
                }
                got += n;
            }
        });
        settle(drain).await?;
        assert_eq!(within(peer_task).await?, total);
        within(w.wait_closed()).await?;
        assert!(within(w.drain()).await.is_err(), "closed by now");
        Ok(())
    });
}
