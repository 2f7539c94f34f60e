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


def run_child(env_extra: dict[str, str], script: str = CHILD):
    """The last line `script` prints, as JSON, run in a fresh interpreter with `env_extra`."""
    env = {**os.environ, **env_extra}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
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


CACHE_CHILD = r"""
import gc, json, torch
from sketchmine.mining import allocator

def batch(seed):  # a batch's worth of large tensors, written, read back, then freed
    g = torch.Generator().manual_seed(seed)
    big = [torch.rand(n, generator=g) for n in (3 << 20, 1 << 20, 3 << 20)]  # 12, 4, 12 MiB
    small = torch.rand(1000, generator=g)  # below the cache's 1 MiB: the heap's
    ref = [t.clone() for t in big]
    mixed = big[0] * 2 + big[2]  # an op's output: the allocator's block too
    ok = all(torch.equal(t, r) for t, r in zip(big, ref)) and torch.equal(mixed, ref[0] * 2 + ref[2])
    return ok, float(small.sum())

before = torch.rand(2 << 20)  # allocated by torch's own allocator, freed inside
out = {}
with allocator.kept_freed_memory() as applied:
    oks = [batch(s)[0] for s in range(4)]
    del before
    kept = torch.rand(2 << 20)  # outlives the pass: freed by the cache's deleter after it closed
    expected = float(kept.sum())
out.update(applied=applied, oks=oks, counts=allocator.block_counts)
out["kept_intact"] = float(kept.sum()) == expected
del kept
gc.collect()
with allocator.kept_freed_memory():
    batch(0)
out["second"] = allocator.block_counts
print(json.dumps(out))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_block_cache_serves_each_batch_from_the_last_ones_blocks():
    got = run_child({"SKETCHMINE_MALLOC": ""}, CACHE_CHILD)
    assert got["applied"] and all(got["oks"]) and got["kept_intact"], got
    reused, fresh, evicted, idle = got["counts"]
    # per batch: 3 random tensors + 3 clones + 2 outputs (mixed and its temporary) ≥ 1 MiB; the first
    # batch takes new blocks, the next three reuse them (same sizes), plus `kept`
    assert fresh <= 9 + 1 and reused >= 3 * 8 - 1, got
    assert idle > 0 and evicted == 0, got  # the last batch's blocks, given back on exit
    # a second pass counts afresh: nothing cached from the first survives its exit
    assert got["second"][1] >= 8, got


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_environment_turns_the_block_cache_off():
    got = run_child({"SKETCHMINE_MALLOC": "default"}, CACHE_CHILD)
    assert not got["applied"] and got["counts"] is None and all(got["oks"]), got


GROWING_CHILD = r"""
import json, torch
from sketchmine.mining import allocator

with allocator.kept_freed_memory():
    for mib in range(2, 42):  # every "batch" a new, larger size (images at their own sizes)
        t = torch.empty(mib << 18).fill_(1.0)
        assert float(t[-1]) == 1.0
        del t
print(json.dumps(allocator.block_counts))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_block_cache_stays_bounded_when_sizes_keep_changing():
    reused, fresh, evicted, idle = run_child({"SKETCHMINE_MALLOC": ""}, GROWING_CHILD)
    # 40 sizes of 2-41 MiB, one alive at a time, each larger than every kept block: what stays
    # kept is bounded by twice the most in use at once (41 MiB), not the 860 MiB of every size seen
    assert fresh == 40 and evicted > 0, (reused, fresh, evicted, idle)
    assert idle <= 2 * (41 << 20), (reused, fresh, evicted, idle)


POPULATED_CHILD = r"""
import json, resource, torch
from sketchmine.mining import allocator

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # every thread: the fill is parallel

with allocator.kept_freed_memory():
    t = torch.empty(4 << 18)  # 4 MiB: a new block of the cache
    before = faults()
    t.fill_(2.0)  # the first write of each of its 1,024 pages
    during = faults() - before
    total = float(t.sum())
print(json.dumps({"faults": during, "sum": total}))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_a_new_block_comes_mapped_in():
    # mapped with its pages (one call) rather than faulted in page by page by its first writes:
    # 256 faults for AlexNet's 1 MiB fc maxima took 5-15 ms in some batches on a 2-core VM
    got = run_child({"SKETCHMINE_MALLOC": ""}, POPULATED_CHILD)
    assert got["sum"] == 2.0 * (4 << 18) and got["faults"] < 128, got  # 1,000+ when faulted page by page
