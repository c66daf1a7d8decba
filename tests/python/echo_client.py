#!/usr/bin/env python3
"""An asyncio client for braid's line echo server (driven by tests/io_python_client.rs).

Usage: echo_client.py PORT N [MODE]

MODE "lines" (the default) sends N lines one at a time, awaiting and checking each echo.
MODE "burst" sends all N lines at once (writelines, then drain) and then checks the N echoes
in order. Either way the client then half-closes (write_eof) and expects the server to close
the connection (EOF) with nothing more sent.

Prints "ok: ..." and exits 0, or prints what went wrong to stderr and exits 1.
"""

import asyncio
import sys

TIMEOUT = 10.0


def line(i):
    """Line i: its number, then 0 to 299 filler bytes, then a newline."""
    return f"{i}:".encode() + bytes(97 + (i + k) % 26 for k in range(i * 37 % 300)) + b"\n"


async def expect_echo(reader, i):
    echo = await asyncio.wait_for(reader.readline(), TIMEOUT)
    if echo != line(i):
        raise AssertionError(f"line {i}: sent {line(i)!r}, got back {echo!r}")
    return len(echo)


async def main(port, n, mode):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port), TIMEOUT
    )
    total = 0
    if mode == "lines":
        for i in range(n):
            writer.write(line(i))
            await writer.drain()
            total += await expect_echo(reader, i)
    elif mode == "burst":
        writer.writelines(line(i) for i in range(n))
        await asyncio.wait_for(writer.drain(), TIMEOUT)
        for i in range(n):
            total += await expect_echo(reader, i)
    else:
        raise AssertionError(f"unknown mode {mode!r}")
    writer.write_eof()
    rest = await asyncio.wait_for(reader.read(), TIMEOUT)
    if rest != b"":
        raise AssertionError(f"expected EOF after the echoes, got {rest!r}")
    writer.close()
    await writer.wait_closed()
    print(f"ok: {n} lines, {total} bytes echoed ({mode})")


if __name__ == "__main__":
    port, n = int(sys.argv[1]), int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "lines"
    try:
        asyncio.run(main(port, n, mode))
    except Exception as e:  # any failure is a non-zero exit with its reason
        print(f"echo_client.py failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
