"""CPython twin of benches/process_pool.rs: CPU-bound jobs in a pool of 2 worker processes,
awaited from a coroutine.

    python3 benches/python/process_pool.py [--loop asyncio|uvloop] [--quick] [workload ...]

- process_pool_tiny: a coroutine hands 10 000 trivial jobs (x + 1) to a 2-worker
  `concurrent.futures.ProcessPoolExecutor` with `loop.run_in_executor`, all at once, and
  awaits them all: the pool's round trip (pickling, pipes, its feeder threads) per job.
- process_pool_cpu: the same with 100 jobs that each keep a CPU busy for 10 ms (a spin on
  the clock, so that the language's speed does not enter into it): the pool's overhead
  beside real work, where 2 workers should take about 0.5 s.

The pool is made once per workload, outside the timing, and warmed up by the untimed first
run. Its start method is the platform's default (recorded in the JSON). Prints the JSON
summary described in _common.py.
"""

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import _common

WORKERS = 2
TINY_JOBS = 10_000
CPU_JOBS = 100
CPU_MS = 10


def tiny(x):
    return x + 1


def spin(ms):
    """Keeps a CPU busy for `ms` milliseconds; returns how many times it looked at the clock."""
    end = time.perf_counter() + ms / 1000
    turns = 0
    while time.perf_counter() < end:
        turns += 1
    return turns


def through_the_pool(settings, fn, args, check):
    with ProcessPoolExecutor(max_workers=WORKERS) as pool:

        async def workload():
            loop = asyncio.get_running_loop()
            results = await asyncio.gather(*(loop.run_in_executor(pool, fn, a) for a in args))
            check(results)

        result = _common.on_fresh_loop(settings, workload)
    result["start_method"] = multiprocessing.get_start_method()
    return result


def process_pool_tiny(settings):
    def check(results):
        assert results == [x + 1 for x in range(TINY_JOBS)]

    return through_the_pool(settings, tiny, range(TINY_JOBS), check)


def process_pool_cpu(settings):
    def check(results):
        assert len(results) == CPU_JOBS and all(turns > 0 for turns in results)

    return through_the_pool(settings, spin, [CPU_MS] * CPU_JOBS, check)


if __name__ == "__main__":
    _common.main(
        "process_pool",
        {"process_pool_tiny": process_pool_tiny, "process_pool_cpu": process_pool_cpu},
    )
