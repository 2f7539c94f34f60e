"""Freed memory kept while mining on the CPU (mining/allocator.py): applied on glibc, counted
when nested, given back on exit, and off with SKETCHMINE_MALLOC=default."""
from __future__ import annotations

import os
import platform

import pytest
import torch

from sketchmine.mining import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def churn(mib: int = 48, times: int = 4) -> None:
    """Batches' worth of large tensors, each written and freed (above glibc's 32 MiB mmap limit)."""
    for _ in range(times):
        torch.empty(mib << 18).fill_(1.5)  # mib MiB of float32


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_memory_is_kept_inside_and_given_back_after():
    churn()
    before = resident_mib()
    with allocator.kept_freed_memory() as applied:
        assert applied
        with allocator.kept_freed_memory() as inner:  # nested: counted, the outer exit restores
            assert inner
        churn()
        kept = resident_mib()
        assert kept > before + 40, (before, kept)  # the freed 48 MiB stays for the next batch
    after = resident_mib()
    assert after < kept - 40, (kept, after)  # trimmed on exit
    churn()
    assert resident_mib() < kept - 40  # glibc's own thresholds again: large blocks are returned


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_environment_turns_it_off(monkeypatch):
    monkeypatch.setenv("SKETCHMINE_MALLOC", "default")
    churn()
    before = resident_mib()
    with allocator.kept_freed_memory() as applied:
        assert not applied
        churn()
        assert resident_mib() < before + 40
