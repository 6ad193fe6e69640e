"""Freed heap pages go back to the OS (core/memory.py; the learner calls it after every step)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# In a fresh process, so the allocator's state is known: 200 MB of heap blocks (each below glibc's mmap
# threshold), each followed by a small block that stays, so freeing the big ones leaves holes that glibc
# keeps (it only trims the heap's top by itself).
PROGRAM = """
import json, psutil
from core.memory import release_freed_memory
rss = lambda: psutil.Process().memory_info().rss / 2**20
big, pins = [], []
for _ in range(2000):
    big.append(bytearray(100_000))
    pins.append(bytearray(1000))
held = rss()
del big
freed = rss()
released = release_freed_memory()
print(json.dumps({"held": held, "freed": freed, "trimmed": rss(), "released": released}))
"""


def test_release_freed_memory_returns_the_holes_glibc_keeps():
    result = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, check=True)
    rss = json.loads(result.stdout)
    print(f"\nRSS MiB: holding {rss['held']:.0f}, after free {rss['freed']:.0f}, after release {rss['trimmed']:.0f}")
    assert rss["released"]
    assert rss["freed"] > rss["held"] - 50  # free alone keeps the pages
    assert rss["trimmed"] < rss["freed"] - 150  # released: nearly all of the 190 MB freed
