"""Freed memory goes back to the system (pipeline/memory.py), measured on this process's resident size."""

from __future__ import annotations

import gc

import pytest

from pipeline import memory

CHUNK = 100_000  # under glibc's mmap threshold: these come from the heap, as a model's buffers do
CHUNKS = 2_000  # 200 MB


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(memory._libc() is None, reason="not glibc: the measures do nothing there")
def test_freed_heap_memory_is_given_back() -> None:
    chunks = [bytearray(CHUNK) for _ in range(CHUNKS)]
    for chunk in chunks:
        chunk[::4096] = b"\x01" * len(chunk[::4096])  # touch every page: resident
    pinned = chunks[-1]  # the heap's top stays in use, so free() alone cannot shrink it
    del chunks
    gc.collect()
    freed = resident_mb()
    memory.give_back()
    after = resident_mb()
    print(f"after free(): {freed:.0f} MB resident; after give_back(): {after:.0f} MB")
    assert freed - after > 0.8 * CHUNK * CHUNKS / 2**20, "the freed chunks stayed resident"
    assert pinned[0] == 1
