"""Freed memory kept while mining on the CPU (mining/allocator.py): applied on glibc, counted
when nested, given back on exit, and off with SKETCHMINE_MALLOC=default. Each check runs in a
fresh interpreter: what a heap holds depends on everything the process allocated before."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

CHILD = r"""
import json, os, torch
from sketchmine.mining import allocator

def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def churn(mib=64, times=3):  # batches' worth of tensors above glibc's 32 MiB mmap limit, written and freed
    for _ in range(times):
        torch.empty(mib << 18).fill_(1.5)

churn()
out = {"before": resident_mib()}
with allocator.kept_freed_memory() as applied:
    with allocator.kept_freed_memory() as inner:  # nested: counted, only the outer exit restores
        pass
    churn()
    out.update(applied=applied, inner=inner, inside=resident_mib())
out["after"] = resident_mib()
churn()
out["later"] = resident_mib()
print(json.dumps(out))
"""


def run_child(env_extra: dict[str, str]) -> dict[str, float]:
    env = {**os.environ, **env_extra}
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_memory_is_kept_inside_and_given_back_after():
    got = run_child({"SKETCHMINE_MALLOC": ""})
    assert got["applied"] and got["inner"]
    assert got["inside"] > got["before"] + 50, got  # the freed 64 MiB stays for the next batch
    assert got["after"] < got["inside"] - 50, got  # trimmed on exit
    assert got["later"] < got["inside"] - 50, got  # glibc's thresholds again: large blocks go back


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_environment_turns_it_off():
    got = run_child({"SKETCHMINE_MALLOC": "default"})
    assert not got["applied"] and not got["inner"]
    assert got["inside"] < got["before"] + 50, got
