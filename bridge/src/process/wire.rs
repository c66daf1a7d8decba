//! What crosses the connection between the pool and a worker: length-prefixed frames (a
//! little-endian `u32` length, then that many bytes of postcard), preceded on the worker's
//! side by a magic marker.
//!
//! The marker says that what connected is a worker speaking this protocol, and where its
//! frames begin. (It was born when the conversation ran over the worker's stdout, where the
//! program's own output, such as libtest's "running 1 test", came first and had to be
//! skipped; that output now goes to /dev/null, and the pool still skips anything before
//! the marker.)

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Read, Write};

/// Starts a worker's conversation; nothing a program prints is likely to contain it. Its
/// first byte occurs nowhere else in it, which keeps [`skip_to_magic`] a simple scan.
pub(super) const MAGIC: &[u8] = b"\x00braid-process-pool-worker\x1b";

/// No frame is larger: a length beyond it means the stream is garbage.
const MAX_FRAME: usize = 1 << 30;

/// The largest encoded argument or result a frame is sure to carry: a frame's other fields
/// (its variant, a job's id and function, the bytes' length) take at most 21 bytes.
pub(super) const MAX_PAYLOAD: usize = MAX_FRAME - 64;

/// Pool to worker.
#[derive(Serialize, Deserialize, Debug)]
pub(super) enum ToWorker {
    /// Run registered function `func` on `arg` (its postcard encoding).
    Job { id: u64, func: u32, arg: Vec<u8> },
    /// Leave.
    Exit,
}

/// Worker to pool.
#[derive(Serialize, Deserialize, Debug)]
pub(super) enum FromWorker {
    /// Ready to serve: the worker's pid and the functions it has registered, in order.
    Hello { pid: u32, functions: Vec<String> },
    /// The initializer panicked; the worker exits.
    InitFailed(String),
    /// Job `id` is done.
    Done { id: u64, outcome: Outcome },
}

/// How a job ended in the worker.
#[derive(Serialize, Deserialize, Debug)]
pub(super) enum Outcome {
    /// The postcard encoding of the function's result.
    Value(Vec<u8>),
    /// The function panicked with this message.
    Panicked(String),
    /// The argument did not decode as the function's argument type.
    BadArgument(String),
    /// The result could not be encoded.
    BadResult(String),
    /// No function has this index in the worker.
    Unknown(u32),
}

/// Writes `msg` as one frame and flushes.
///
/// # Errors
///
/// `InvalidInput` for a message over the frame limit (nothing is written then: the stream
/// is still good), and the write's own errors.
pub(super) fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let bytes = postcard::to_allocvec(msg).map_err(io::Error::other)?;
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a frame of {} bytes is too large (at most {MAX_FRAME})",
                    bytes.len()
                ),
            )
        })?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&bytes)?;
    w.flush()
}

/// Reads one frame: `Ok(None)` on a clean end of stream (before a frame starts).
///
/// # Errors
///
/// `UnexpectedEof` for a stream cut inside a frame, `InvalidData` for a frame that does not
/// decode or claims an absurd length, and the read's own errors.
pub(super) fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame claims {len} bytes"),
        ));
    }
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes)?;
    postcard::from_bytes(&bytes)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Discards bytes up to and including [`MAGIC`]; false if the stream ended first.
pub(super) fn skip_to_magic<R: BufRead>(r: &mut R) -> io::Result<bool> {
    // How much of MAGIC the bytes just read end with. MAGIC's first byte occurs nowhere
    // else in it, so no partial match can start inside another: on a mismatch the match
    // restarts at 0, or at 1 if this byte is MAGIC's first.
    let mut matched = 0;
    loop {
        let buf = match r.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(false);
        }
        let mut used = 0;
        for &byte in buf {
            used += 1;
            if byte == MAGIC[matched] {
                matched += 1;
            } else {
                matched = usize::from(byte == MAGIC[0]);
            }
            if matched == MAGIC.len() {
                r.consume(used);
                return Ok(true);
            }
        }
        r.consume(used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_clean_end_is_none() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &ToWorker::Job {
                id: 7,
                func: 2,
                arg: vec![1, 2, 3],
            },
        )
        .unwrap();
        write_frame(&mut buf, &ToWorker::Exit).unwrap();
        let mut r = &buf[..];
        match read_frame::<_, ToWorker>(&mut r).unwrap() {
            Some(ToWorker::Job { id, func, arg }) => {
                assert_eq!((id, func, arg), (7, 2, vec![1, 2, 3]))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            read_frame::<_, ToWorker>(&mut r).unwrap(),
            Some(ToWorker::Exit)
        ));
        assert!(read_frame::<_, ToWorker>(&mut r).unwrap().is_none());
    }

    #[test]
    fn a_cut_frame_and_an_absurd_length_are_errors() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &ToWorker::Exit).unwrap();
        buf.pop();
        let err = read_frame::<_, ToWorker>(&mut &buf[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let huge = u32::MAX.to_le_bytes();
        let err = read_frame::<_, ToWorker>(&mut &huge[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn skips_what_a_program_printed_before_the_marker() {
        let mut stream = b"\nrunning 1 test\n\x00\x00braid-pro\x00".to_vec();
        stream.extend_from_slice(MAGIC);
        write_frame(&mut stream, &ToWorker::Exit).unwrap();
        let mut r = io::BufReader::with_capacity(3, &stream[..]);
        assert!(skip_to_magic(&mut r).unwrap());
        assert!(matches!(
            read_frame::<_, ToWorker>(&mut r).unwrap(),
            Some(ToWorker::Exit)
        ));
        let mut r = io::BufReader::new(&b"no marker here"[..]);
        assert!(!skip_to_magic(&mut r).unwrap());
    }
}
