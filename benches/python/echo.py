"""CPython asyncio (or uvloop) twin of benches/echo.rs: an asyncio streams echo server driven by
the Rust bench's own load generator, so that every server faces the same client.

    python3 benches/python/echo.py [--loop asyncio|uvloop] [--quick] [echo]

- echo: `asyncio.start_server` on 127.0.0.1, each connection `reader.read(4096)` ->
  `writer.write` -> `await writer.drain()` (asyncio sets TCP_NODELAY on every connection), on a
  loop running on its own thread. The load generator is benches/echo.rs started as
  `echo-<hash> --load-generator ADDR 50 2 100`: a separate process with 50 connections over 2
  threads; each `run 200` command makes every connection send 200 messages of 100 bytes, each
  one read back before the next (10 000 round trips), and answers with its own wall time,
  which is the sample.

The load generator is `$BRAID_ECHO_LOAD_GENERATOR` if set, else the echo bench executable
that `cargo bench -p braid --bench echo --no-run --message-format=json` names (building it
if needed; `$CARGO` is the cargo to use, `$CARGO_TARGET_DIR` is honoured as cargo does).

Prints the JSON summary described in _common.py; the echo result also has `messages` (per
iteration) and `messages_per_s` (at the median).
"""

import asyncio
import json
import os
import pathlib
import subprocess
import sys

import _common

# The same numbers as benches/echo.rs.
CONNECTIONS = 50
MESSAGE_SIZE = 100
MESSAGES_PER_CONNECTION = 200
LOAD_THREADS = 2
READ_SIZE = 4096
MESSAGES = CONNECTIONS * MESSAGES_PER_CONNECTION

# How long one answer of the load generator may take.
ANSWER_LIMIT_S = 120


def load_generator():
    """The path of the load generator: $BRAID_ECHO_LOAD_GENERATOR, or what cargo builds."""
    path = os.environ.get("BRAID_ECHO_LOAD_GENERATOR")
    if path:
        return path
    root = pathlib.Path(__file__).resolve().parents[2]
    cargo = os.environ.get("CARGO", "cargo")
    command = [cargo, "bench", "-p", "braid", "--bench", "echo", "--no-run", "--message-format=json"]
    print(f"[echo] finding the load generator: {' '.join(command)}", file=sys.stderr, flush=True)
    built = subprocess.run(
        command, cwd=root, stdout=subprocess.PIPE, text=True, timeout=1800, check=False
    )
    for line in built.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if (
            msg.get("reason") == "compiler-artifact"
            and msg.get("target", {}).get("name") == "echo"
            and msg.get("executable")
        ):
            return msg["executable"]
    raise RuntimeError(f"`{' '.join(command)}` named no echo bench executable (exit {built.returncode})")


async def handle_echo(reader, writer):
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


class LoadGenerator:
    """The load generator process, connected to `port` on 127.0.0.1."""

    def __init__(self, path, port):
        self.proc = subprocess.Popen(
            [
                path,
                "--load-generator",
                f"127.0.0.1:{port}",
                str(CONNECTIONS),
                str(LOAD_THREADS),
                str(MESSAGE_SIZE),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        first = self.answer()
        if first != "ready":
            raise RuntimeError(f"the load generator did not connect: {first!r}")

    def answer(self):
        # A blocking read: the loop runs on its own thread, and the GIL is released meanwhile.
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator ended (exit {self.proc.poll()})")
        return line.strip()

    def run(self, rounds):
        """One measured run; the load generator's wall time in seconds."""
        self.proc.stdin.write(f"run {rounds}\n")
        self.proc.stdin.flush()
        line = self.answer()
        if not line.startswith("done "):
            raise RuntimeError(f"unexpected answer from the load generator: {line!r}")
        return int(line.split()[1]) / 1e9

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("the load generator did not exit: killed")
        if self.proc.returncode != 0:
            raise RuntimeError(f"the load generator failed (exit {self.proc.returncode})")


def echo(settings):
    path = load_generator()
    with _common.LoopThread(settings) as loop:
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(handle_echo, "127.0.0.1", 0), loop
        ).result(timeout=30)
        port = server.sockets[0].getsockname()[1]
        try:
            load = LoadGenerator(path, port)
            try:
                samples = settings.sample(lambda: load.run(MESSAGES_PER_CONNECTION))
            except BaseException:
                load.proc.kill()
                load.proc.wait()
                raise
            load.close()
        finally:

            async def shut():
                server.close()
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout=30)
    result = _common.summary(samples)
    result["messages"] = MESSAGES
    result["messages_per_s"] = MESSAGES / result["median_s"]
    return result


if __name__ == "__main__":
    _common.main("echo", {"echo": echo})
