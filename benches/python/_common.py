"""Shared by the CPython twins of braid's comparison benches (benches/python/*.py).

Each script defines its workloads with the same names, sizes and shapes as the Rust benches
(benches/scheduler.rs, benches/bridge.rs) and calls `main()` here, which parses the command
line, times every workload on a fresh event loop and prints one JSON object on stdout:

    {"script": "scheduler", "loop": "asyncio", "python": "3.11.7", "loop_version": "3.11.7",
     "quick": false,
     "results": {"spawn_many_local": {"median_s": 0.012, "samples_s": [...]},
                 "run_coroutine_threadsafe": {"median_s": ..., "p50_s": ..., "p99_s": ...}},
     "errors": {"workload": "what went wrong"}}

The report generator (`cargo run --release -p braid-benchmarks`) runs every script in this
directory whose name does not start with `_`, once with plain `python3` (the asyncio column)
and once with a virtualenv's python that has uvloop (`--loop uvloop`), and reads that object.
Progress goes to stderr. Plain standard library; uvloop only when asked for.
"""

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
import traceback

MASK64 = (1 << 64) - 1

# The seed of the `timers` workload's delays: the same as TIMER_SEED in benches/common/mod.rs.
TIMER_SEED = 0x5EED0B7A1D00


class SplitMix64:
    """SplitMix64 (Steele, Lea and Flood, 2014), bit for bit as in benches/common/mod.rs."""

    def __init__(self, seed):
        self.state = seed & MASK64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


def timer_delays(n):
    """`n` delays of 0 to 10 ms inclusive, in seconds, whole microseconds, from TIMER_SEED."""
    rng = SplitMix64(TIMER_SEED)
    return [(rng.next_u64() % 10_001) / 1e6 for _ in range(n)]


def loop_factory(name):
    """A function that makes a new event loop of the kind `name` ("asyncio" or "uvloop")."""
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop  # only the uvloop run needs it

        return uvloop.new_event_loop
    raise SystemExit(f"unknown --loop {name!r}: expected asyncio or uvloop")


class Settings:
    """What the command line asked for: the loop kind and the sampling budget."""

    def __init__(self, loop, quick):
        self.loop = loop
        self.new_loop = loop_factory(loop)
        self.quick = quick
        # Samples per workload, and the time after which sampling stops early (at least
        # MIN_SAMPLES are always taken), after one untimed warm-up run.
        self.max_samples = 5 if quick else 10
        self.budget_s = 4.0 if quick else 20.0

    MIN_SAMPLES = 3

    def sample(self, run_once):
        """Calls `run_once()` (which returns its own elapsed seconds) once to warm up, then
        repeatedly; returns the list of timed samples."""
        run_once()
        samples = []
        started = time.perf_counter()
        while len(samples) < self.max_samples:
            samples.append(run_once())
            if len(samples) >= self.MIN_SAMPLES and time.perf_counter() - started > self.budget_s:
                break
        return samples


def summary(samples):
    """The result entry of a workload timed by `samples` (seconds each)."""
    return {"median_s": statistics.median(samples), "samples_s": samples}


def on_fresh_loop(settings, workload):
    """Times `workload()` (a coroutine function) with `run_until_complete` on a new loop of the
    chosen kind, sampled as `Settings.sample` does; the loop is closed afterwards."""
    loop = settings.new_loop()
    try:
        asyncio.set_event_loop(loop)

        def run_once():
            start = time.perf_counter()
            loop.run_until_complete(workload())
            return time.perf_counter() - start

        return summary(settings.sample(run_once))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


class LoopThread:
    """A loop of the chosen kind running `run_forever` on its own thread, so that the calling
    thread is foreign to it, as the Rust benches' measuring thread is to the runtimes."""

    def __init__(self, settings):
        import threading

        self.loop = settings.new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-loop")

    def __enter__(self):
        self.thread.start()
        return self.loop

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
        return False


def main(script, workloads):
    """Parses the command line, runs the selected `workloads` (a dict name -> function taking
    the Settings and returning a result dict) and prints the JSON summary."""
    parser = argparse.ArgumentParser(description=f"CPython twin of braid's {script} benches")
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    parser.add_argument("--quick", action="store_true", help="fewer samples, a shorter budget")
    parser.add_argument("only", nargs="*", help="run only these workloads")
    args = parser.parse_args()
    settings = Settings(args.loop, args.quick)
    loop_version = platform.python_version()
    if args.loop == "uvloop":
        import uvloop

        loop_version = uvloop.__version__
    results, errors = {}, {}
    for name, run in workloads.items():
        if args.only and name not in args.only:
            continue
        print(f"[{script}/{args.loop}] {name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = run(settings)
            print(
                f"[{script}/{args.loop}] {name}: median {results[name]['median_s'] * 1e3:.3f} ms",
                file=sys.stderr,
                flush=True,
            )
        except Exception as e:  # report it in the JSON and go on with the next workload
            traceback.print_exc()
            errors[name] = f"{type(e).__name__}: {e}"
    json.dump(
        {
            "script": script,
            "loop": args.loop,
            "python": platform.python_version(),
            "loop_version": loop_version,
            "quick": args.quick,
            "results": results,
            "errors": errors,
        },
        sys.stdout,
    )
    print()
