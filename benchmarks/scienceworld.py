"""ScienceWorld env throughput and memory: the adapter's fast step vs the package's ``env.step`` loop.

Plays the task's gold action sequence (from the package's gold-path generator) over and over:
1. one JVM each: the package's ``ScienceWorldEnv.step`` loop vs the adapter (without and with listing the
   admissible actions every step), step calls only, after warm-up episodes; the observations should match;
2. aggregate steps/s of 1, 2, 4, 8 adapter envs, each played by its own thread (resets included);
3. resident memory of each env's JVM (/proc VmRSS now and VmHWM peak).

Prints figures; asserts nothing. ``python -m benchmarks.scienceworld --help`` lists the knobs.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

from envs.scienceworld import ScienceWorldEnv


def gold_actions(env: ScienceWorldEnv, task: str, variation: int) -> list[str]:
    """The package's gold path for the task's train variation, cut where the adapter's episode ends."""
    actions = env.gold_path(task, variation)
    env.reset(task, variation)
    for i, action in enumerate(actions):
        if env.step(action).done:
            return actions[: i + 1]
    raise RuntimeError(f"the gold path of {task} variation {variation} does not end the episode")


def jvm_memory_mib(pid: int) -> tuple[int, int]:
    """(resident now, peak resident) of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


def adapter_episode(env: ScienceWorldEnv, task: str, variation: int, actions: list[str]) -> tuple[float, float, list[str]]:
    """Seconds spent in reset(), in step() over one episode, and the episode's observations."""
    start = time.perf_counter()
    env.reset(task, variation)
    reset_s = time.perf_counter() - start
    start = time.perf_counter()
    observations = [env.step(a).observation for a in actions]
    return reset_s, time.perf_counter() - start, observations


def stock_episode(env, task: str, index: int, simplification: str, actions: list[str]) -> tuple[float, float, list[str]]:
    """The same for the package's env: load() + reset() (which loads again), then its step() loop."""
    start = time.perf_counter()
    env.load(task, index, simplification)
    env.reset()
    reset_s = time.perf_counter() - start
    start = time.perf_counter()
    observations = [env.step(a)[0] for a in actions]
    return reset_s, time.perf_counter() - start, observations


def compare(args, actions: list[str]) -> None:
    """Rounds of one episode per variant, interleaved so that load from other work hits all alike."""
    import scienceworld

    fast = ScienceWorldEnv([args.task], args.simplification, max_steps=len(actions) + 1, jvm_heap_mb=args.heap_mb)
    listing = ScienceWorldEnv([args.task], args.simplification, max_steps=len(actions) + 1, jvm_heap_mb=args.heap_mb)
    fast.list_admissible, listing.list_admissible = False, True
    name, index = fast.package_variation(args.task, args.variation)
    stock = scienceworld.ScienceWorldEnv(envStepLimit=10_000)
    seconds = {"stock": 0.0, "fast": 0.0, "listing": 0.0}
    reset_seconds = {"stock": 0.0, "fast": 0.0}
    same = True
    try:
        for round_ in range(args.warmup + args.episodes):  # the first rounds warm the JIT up, untimed
            stock_reset_s, stock_s, stock_obs = stock_episode(stock, name, index, args.simplification, actions)
            fast_reset_s, fast_s, fast_obs = adapter_episode(fast, args.task, args.variation, actions)
            _, listing_s, _ = adapter_episode(listing, args.task, args.variation, actions)
            same = same and stock_obs == fast_obs
            if round_ >= args.warmup:
                seconds["stock"] += stock_s
                seconds["fast"] += fast_s
                seconds["listing"] += listing_s
                reset_seconds["stock"] += stock_reset_s
                reset_seconds["fast"] += fast_reset_s
    finally:
        del stock  # the package's __del__ closes its JVM (an explicit close() first makes __del__ fail on the dead pipe)
        fast.close()
        listing.close()
    steps = len(actions) * args.episodes
    print(f"per env, one JVM each, {steps} steps ({args.episodes} x {len(actions)}-step gold path) after {args.warmup} warm-up episodes, step calls only:")
    for key, label in (("stock", "package env.step loop"), ("fast", "adapter, fast step"), ("listing", "adapter, listing actions")):
        ratio = "" if key == "stock" else f"  {seconds['stock'] / seconds[key]:5.1f}x the package"
        print(f"  {label:26s} {steps / seconds[key]:8.1f} steps/s  ({1000 * seconds[key] / steps:6.1f} ms/step){ratio}")
    print(
        f"  reset: package load() + reset() {1000 * reset_seconds['stock'] / args.episodes:.0f} ms, "
        f"adapter reset() {1000 * reset_seconds['fast'] / args.episodes:.0f} ms"
    )
    print(f"  same observations as the package in every round: {same}")


def aggregate(args, actions: list[str], num_envs: int) -> None:
    start = time.perf_counter()
    envs = [None] * num_envs

    def make(i: int) -> None:
        envs[i] = ScienceWorldEnv([args.task], args.simplification, max_steps=len(actions) + 1, jvm_heap_mb=args.heap_mb)
        envs[i].list_admissible = False

    try:
        _run_threads(num_envs, make)
        started_s = time.perf_counter() - start
        _run_threads(num_envs, lambda i: _play(envs[i], args.task, args.variation, actions, args.warmup))  # JIT warm-up
        start = time.perf_counter()
        _run_threads(num_envs, lambda i: _play(envs[i], args.task, args.variation, actions, args.episodes))
        wall = time.perf_counter() - start
        memory = [jvm_memory_mib(env.jvm_process.pid) for env in envs]
    finally:
        for env in envs:
            if env is not None:
                env.close()
    steps = num_envs * args.episodes * len(actions)
    rss = sum(m[0] for m in memory) / num_envs
    peak = max(m[1] for m in memory)
    print(
        f"  {num_envs} envs: {steps / wall:7.1f} steps/s in all, {steps / wall / num_envs:6.1f} per env "
        f"({steps} steps in {wall:.1f} s, resets included); JVM RSS {rss:.0f} MiB per env (peak {peak}); "
        f"start-up {started_s:.1f} s"
    )


def _play(env: ScienceWorldEnv, task: str, variation: int, actions: list[str], episodes: int) -> None:
    for _ in range(episodes):
        env.reset(task, variation)
        for action in actions:
            env.step(action)


def _run_threads(count: int, target) -> None:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # re-raised below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="find-living-thing")
    parser.add_argument("--variation", type=int, default=0, help="index into the task's train variations")
    parser.add_argument("--simplification", default="easy")
    parser.add_argument("--episodes", type=int, default=10, help="timed episodes per env")
    parser.add_argument("--warmup", type=int, default=10, help="untimed episodes per env first (the JIT needs them)")
    parser.add_argument("--envs", default="1,2,4,8", help="env counts for the aggregate figures (at most 8: one JVM each)")
    parser.add_argument("--heap-mb", type=int, default=128)
    args = parser.parse_args()
    counts = [int(n) for n in args.envs.split(",")]
    if max(counts) > 8:
        raise SystemExit(f"--envs {args.envs}: at most 8 envs (8 JVMs) at once")

    probe = ScienceWorldEnv([args.task], args.simplification, max_steps=1000, jvm_heap_mb=args.heap_mb)
    try:
        actions = gold_actions(probe, args.task, args.variation)
    finally:
        probe.close()
    print(f"task {args.task} train variation {args.variation}, simplification {args.simplification!r}: {len(actions)}-step gold path")
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other work on the machine slows every figure)")
    compare(args, actions)
    print(f"aggregate, each env in its own thread with its own JVM, {args.episodes} episodes per env:")
    for count in counts:
        aggregate(args, actions, count)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
