"""A folder's first fingerprint: every file's bytes hashed, one thread against the default (up to
`folder.HASH_THREADS`, bounded by the usable cores), side by side in one process, the order
alternating. A first `mine` of a folder pays this before its first batch; later ones read the
hash cache. The files are random bytes of a JPEG's size (what is hashed is bytes, not pixels),
written once, read from the page cache in every repeat (a cold disk adds its read time to both).

    python -m benchmarks.fingerprint [--files 4000] [--kb 110] [--repeats 5]

Prints each setting's median seconds and the ratio.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from .common import median


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=4000)
    ap.add_argument("--kb", type=int, default=110)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    from sketchmine.cores import usable_cores
    from sketchmine.data import folder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        (root / "a").mkdir(parents=True)
        rels = [f"a/{i:06d}.jpg" for i in range(args.files)]
        for rel in rels:
            (root / rel).write_bytes(os.urandom(args.kb * 1000))
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")  # no hash cache: every file hashed
        default = folder.HASH_THREADS
        times: dict[str, list[float]] = {"1 thread": [], "default": []}
        for r in range(args.repeats):
            for name in (("1 thread", "default") if r % 2 == 0 else ("default", "1 thread")):
                folder.HASH_THREADS = 1 if name == "1 thread" else default
                folder._HASH_CACHE.clear()
                for f in (Path(tmp) / "cache").rglob("*.json"):
                    f.unlink()
                t = time.perf_counter()
                folder.content_hashes(root, rels)
                times[name].append(time.perf_counter() - t)
        folder.HASH_THREADS = default
    one, many = median(times["1 thread"]), median(times["default"])
    mb = args.files * args.kb / 1000
    print(f"{args.files} files of {args.kb} kB ({mb:.0f} MB), {usable_cores()} usable cores, medians of {args.repeats}:")
    print(f"  1 thread: {one:.3f} s ({mb / one:.0f} MB/s); default: {many:.3f} s ({mb / many:.0f} MB/s); "
          f"1 thread / default = {one / many:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
