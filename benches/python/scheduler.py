"""CPython asyncio (or uvloop) twin of benches/scheduler.rs: the same six workloads, the same
sizes, one event loop (CPython runs Python code on one core at a time).

    python3 benches/python/scheduler.py [--loop asyncio|uvloop] [--quick] [workload ...]

- spawn_many_local: a task creates 10 000 tasks that each decrement a counter; the last
  completes a Future the creating task awaits.
- spawn_many_remote: the main thread, foreign to the loop (which runs on its own thread),
  hands 10 000 coroutines to it with `loop.call_soon_threadsafe(loop.create_task, coro)` (the
  asyncio way to spawn from another thread without a concurrent Future per task) and blocks
  on a threading.Event the last one sets.
- ping_pong: 1 000 pairs of tasks exchanging two one-shot messages (Futures).
- yield_many: 200 tasks x 1 000 `await asyncio.sleep(0)`.
- chained_spawn: a chain of 1 000 tasks, each creating the next.
- timers: 100 000 tasks each sleeping 0-10 ms (the Rust bench's SplitMix64 delays), all awaited.

Prints the JSON summary described in _common.py.
"""

import asyncio
import threading
import time

import _common

SPAWN_TASKS = 10_000
PING_PONG_PAIRS = 1_000
YIELD_TASKS = 200
YIELDS_PER_TASK = 1_000
CHAIN_LENGTH = 1_000
TIMERS = 100_000


async def spawn_many_local():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    remaining = SPAWN_TASKS

    async def child():
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done.set_result(None)

    async def spawner():
        for _ in range(SPAWN_TASKS):
            loop.create_task(child())
        await done

    await loop.create_task(spawner())


def spawn_many_remote(settings):
    with _common.LoopThread(settings) as loop:

        def run_once():
            finished = threading.Event()
            remaining = SPAWN_TASKS

            async def child():
                nonlocal remaining  # only ever touched on the loop's thread
                remaining -= 1
                if remaining == 0:
                    finished.set()

            start = time.perf_counter()
            for _ in range(SPAWN_TASKS):
                loop.call_soon_threadsafe(loop.create_task, child())
            finished.wait()
            return time.perf_counter() - start

        samples = settings.sample(run_once)
    return _common.summary(samples)


async def ping_pong():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    remaining = PING_PONG_PAIRS
    # asyncio keeps only weak references to tasks: hold them so none is collected mid-wait.
    tasks = []

    async def answer(ping, pong):
        await ping
        pong.set_result(None)

    async def pair():
        nonlocal remaining
        ping, pong = loop.create_future(), loop.create_future()
        tasks.append(loop.create_task(answer(ping, pong)))
        ping.set_result(None)
        await pong
        remaining -= 1
        if remaining == 0:
            done.set_result(None)

    async def spawner():
        for _ in range(PING_PONG_PAIRS):
            tasks.append(loop.create_task(pair()))
        await done

    await loop.create_task(spawner())


async def yield_many():
    async def yielder():
        for _ in range(YIELDS_PER_TASK):
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(yielder()) for _ in range(YIELD_TASKS)]
    for t in tasks:
        await t


async def chained_spawn():
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def chain(links_left):
        if links_left == 0:
            done.set_result(None)
        else:
            loop.create_task(link(links_left - 1))

    async def link(links_left):
        chain(links_left)

    chain(CHAIN_LENGTH)
    await done


DELAYS = _common.timer_delays(TIMERS)


async def timers():
    tasks = [asyncio.create_task(asyncio.sleep(d)) for d in DELAYS]
    for t in tasks:
        await t


def on_loop(workload):
    return lambda settings: _common.on_fresh_loop(settings, workload)


if __name__ == "__main__":
    _common.main(
        "scheduler",
        {
            "spawn_many_local": on_loop(spawn_many_local),
            "spawn_many_remote": spawn_many_remote,
            "ping_pong": on_loop(ping_pong),
            "yield_many": on_loop(yield_many),
            "chained_spawn": on_loop(chained_spawn),
            "timers": on_loop(timers),
        },
    )
