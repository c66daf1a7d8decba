"""CPython asyncio (or uvloop) twin of benches/bridge.rs: plain threads handing work to a loop.

    python3 benches/python/bridge.py [--loop asyncio|uvloop] [--quick] [workload ...]

- call_soon_threadsafe: 4 threads hand 100 000 callbacks (25 000 each) to a loop running on
  its own thread; the time until the last has run.
- run_coroutine_threadsafe: the main thread submits a trivial coroutine with
  `asyncio.run_coroutine_threadsafe` and blocks on `.result()`; median, p50 and p99 over
  20 000 round trips (5 000 with --quick).
- to_thread: a coroutine runs 10 000 trivial jobs on the loop's default executor
  (`loop.run_in_executor(None, ...)`, what `asyncio.to_thread` does minus copying the
  context, so the jobs are submitted at once as the Rust side's are) and awaits them all.

Prints the JSON summary described in _common.py.
"""

import asyncio
import statistics
import threading
import time

import _common

CALLBACKS = 100_000
SUBMITTERS = 4
BLOCKING_JOBS = 10_000


def call_soon_threadsafe(settings):
    with _common.LoopThread(settings) as loop:

        def run_once():
            finished = threading.Event()
            remaining = CALLBACKS

            def callback():
                nonlocal remaining  # only ever touched on the loop's thread
                remaining -= 1
                if remaining == 0:
                    finished.set()

            def submit():
                for _ in range(CALLBACKS // SUBMITTERS):
                    loop.call_soon_threadsafe(callback)

            start = time.perf_counter()
            threads = [threading.Thread(target=submit) for _ in range(SUBMITTERS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            finished.wait()
            return time.perf_counter() - start

        return _common.summary(settings.sample(run_once))


async def one():
    return 1


def run_coroutine_threadsafe(settings):
    n = 5_000 if settings.quick else 20_000
    with _common.LoopThread(settings) as loop:
        for _ in range(n // 10):  # warm-up
            assert asyncio.run_coroutine_threadsafe(one(), loop).result() == 1
        times = []
        for _ in range(n):
            start = time.perf_counter()
            result = asyncio.run_coroutine_threadsafe(one(), loop).result()
            times.append(time.perf_counter() - start)
            assert result == 1
    times.sort()
    return {
        "median_s": statistics.median(times),
        "p50_s": times[n // 2],
        "p99_s": times[n * 99 // 100],
        "round_trips": n,
    }


def job(i):
    return i


async def to_thread():
    loop = asyncio.get_running_loop()
    jobs = [loop.run_in_executor(None, job, i) for i in range(BLOCKING_JOBS)]
    total = 0
    for j in jobs:
        total += await j
    assert total == BLOCKING_JOBS * (BLOCKING_JOBS - 1) // 2


if __name__ == "__main__":
    _common.main(
        "bridge",
        {
            "call_soon_threadsafe": call_soon_threadsafe,
            "run_coroutine_threadsafe": run_coroutine_threadsafe,
            "to_thread": lambda settings: _common.on_fresh_loop(settings, to_thread),
        },
    )
