"""Shared pieces of the benchmarks: machine facts, the model and dataset under test,
timing helpers and a progress recorder that splits `mine`'s wall time into phases."""
from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


# ---- machine -----------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


GIT_ENV = "SKETCHMINE_GIT"


def git_revision() -> str:
    """The commit measured: `git rev-parse --short HEAD` (+dirty when python/, csrc/, benchmarks/ or
    tests/ differ from it);
    where the checkout has no .git (a copy of the working tree on the device machine), the value of
    $SKETCHMINE_GIT, which the session writes into the command (benchmarks/gpu_session.sh)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "python", "csrc",
                                "benchmarks", "tests"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip() if rev else ""
    except (OSError, subprocess.SubprocessError):
        rev = dirty = ""
    if rev:
        return rev + ("+dirty" if dirty else "")
    given = os.environ.get(GIT_ENV, "").strip()
    return f"{given} (from ${GIT_ENV})" if given else "unknown"


def set_tf32(enabled: bool = False) -> dict[str, bool]:
    """Set TF32 for CUDA convolutions and matmuls explicitly, once per process, so that every arm of a
    GPU benchmark runs them alike: off (the default) makes the float32 arms true float32 (torch's
    own default leaves cuDNN's convolutions in TF32). Returns the setting, for the JSON."""
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    return {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}


def machine_info() -> dict:
    import sketchmine
    import torchvision

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_usable": affinity,
        "mem_total_gib": mem_total_gib(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sketchmine": sketchmine.__version__,
        "git": git_revision(),
    }


# ---- model and data ------------------------------------------------------------------------
def build_model(name: str, seed: int = 0, num_classes: int = 1000) -> nn.Module:
    """A torchvision model, random init (weights=None), eval mode, fixed seed; `num_classes`
    is the head's width (10: the embedded dataset's classes)."""
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes).eval()


def conv_linear_layers(model: nn.Module) -> list[str]:
    """Every nn.Conv2d and nn.Linear, in named_modules order (the layers every method taps)."""
    return [n for n, m in model.named_modules() if n and isinstance(m, (nn.Conv2d, nn.Linear))]


def make_dataset(n: int, size: int = 224, named: bool = False):
    """The first `n` images of the embedded Animal-Shape set (train+test, stable order),
    ImageNet preset: 3 channels, `size` px. Loading (gray→RGB, bilinear resize, normalise)
    happens per item, so it is part of every DataLoader-driven measurement alike. `named`: with
    the 10 class names, for a 10-way head."""
    from sketchmine import data

    full = data.animal_shape("all", data.preset("imagenet", 3, (size, size)))
    if n > len(full):
        raise SystemExit(f"asked for {n} images; the embedded dataset has {len(full)}")
    desc = {**full.describe(), "first": n}
    # no class names: the benchmarks mine ImageNet-width (1000-way) heads over these images, which
    # mine refuses to score against 10 named classes; unnamed labels are kept per logit (as a
    # TensorDataset's are), so the class statistics cost what they cost for 1,000 classes
    names = list(full.class_names) if named else []
    return data.ArrayDataset(full.images[:n], full.labels()[:n], names, full.preprocessing, desc)


def topk_recall(run, reference, layer: str) -> np.ndarray:
    """Per unit of `layer`: the share of the reference run's top-k images (its filled slots) that
    `run` also kept: how much a lossy speed option (autocast, compile) changes the answer."""
    got, want = run.layer_array(layer, "image_index").tolist(), reference.layer_array(layer, "image_index").tolist()
    return np.array([len({i for i in y if i >= 0} & set(x)) / max(sum(i >= 0 for i in y), 1)
                     for x, y in zip(got, want)])


def loader(ds, batch_size: int, num_workers: int):
    """The DataLoader every batched measurement iterates: the one `mine` builds (same
    dataset, batch size, workers, and sketchmine's collate function when it has one)."""
    from torch.utils.data import DataLoader

    from sketchmine import data

    collate = getattr(data, "collate", None)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      **({"collate_fn": collate} if collate is not None else {}))


# ---- measuring -------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0: write 5 to /proc/self/clear_refs), so that
    the peak of one measurement is not hidden under an earlier one (model init)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_mib(key: str) -> float:
    from sketchmine.mining.memory import process_status

    value = process_status().get(key)
    return float("nan") if value is None else value / 2**20


def peak_rss_since_reset_mib() -> float:
    """VmHWM: peak resident set since the last reset_peak_rss() (or since start)."""
    return _status_mib("VmHWM")


def current_rss_mib() -> float:
    return _status_mib("VmRSS")


class PhaseClock:
    """A sketchmine `Progress` that timestamps the streaming loop.

    mine() calls start() just before the first batch is read and advance() after each
    batch, so: setup = start - call, loop = last advance - start, finish = return - last
    advance (final flush, per-layer arrays, eval, commit).
    """

    def __init__(self) -> None:
        self.t_start: float | None = None
        self.t_advance: list[float] = []
        self.notes: list[str] = []

    def start(self, total: int, done: int) -> None:
        self.t_start = time.perf_counter()

    def advance(self, n: int) -> None:
        self.t_advance.append(time.perf_counter())

    def note(self, message: str) -> None:
        self.notes.append(message)

    def phases(self, t_call: float, t_return: float) -> dict[str, float]:
        t_start = self.t_start if self.t_start is not None else t_call
        t_last = self.t_advance[-1] if self.t_advance else t_start
        return {"total": t_return - t_call, "setup": t_start - t_call, "loop": t_last - t_start,
                "finish": t_return - t_last}


class LayerClock:
    """Time spent in the model's own work while installed (--split in distributions.py and
    preprocess.py): torch's conv2d and linear calls; given a model, every leaf module's forward
    (its pooling and activations too, without the forward hooks that run after it)."""

    def __init__(self, model: nn.Module | None = None) -> None:
        self.seconds = 0.0
        self.model = model
        self._saved: list[tuple[object, str, object]] = []

    def _timed(self, original):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed

    def __enter__(self) -> LayerClock:
        if self.model is not None:
            for module in self.model.modules():
                if next(module.children(), None) is None:
                    module.forward = self._timed(module.forward)  # an instance attribute, deleted on exit
                    self._saved.append((module, "forward", None))
            return self
        import torch.nn.modules.conv as conv
        import torch.nn.modules.linear as linear

        for owner, name in ((conv.F, "conv2d"), (linear.F, "linear")):
            original = getattr(owner, name)
            self._saved.append((owner, name, original))
            setattr(owner, name, self._timed(original))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._saved):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()


def median(xs: list[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=float))) if xs else float("nan")


# ---- a shared machine: measure and avoid other processes' CPU use ---------------------------------
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + vals[4]
    total = sum(vals)
    return total - idle, total


def others_busy_fraction(interval: float = 0.5) -> float | None:
    """Fraction of all CPUs busy over `interval` while this process sleeps."""
    a = _busy_jiffies()
    time.sleep(interval)
    b = _busy_jiffies()
    if a is None or b is None or b[1] == a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


class QuietWaiter:
    """Before each timed measurement, wait (within a total budget) until other processes
    use less than `threshold` of the machine, so that a concurrent job does not land in
    one method's timing only."""

    def __init__(self, threshold: float = 0.15, max_wait: float = 30.0, budget: float = 240.0,
                 enabled: bool = True) -> None:
        self.threshold, self.max_wait, self.budget, self.enabled = threshold, max_wait, budget, enabled
        self.waited = 0.0
        self.gave_up = 0

    def __call__(self) -> float | None:
        if not self.enabled:
            return None
        t0 = time.perf_counter()
        busy = others_busy_fraction(0.3)
        while (busy is not None and busy > self.threshold and self.waited + (time.perf_counter() - t0) < self.budget
               and time.perf_counter() - t0 < self.max_wait):
            busy = others_busy_fraction(0.5)
        if busy is not None and busy > self.threshold:
            self.gave_up += 1
        self.waited += time.perf_counter() - t0
        return busy


class Meter:
    """Wall time, this process's CPU time, and the CPU time other processes used meanwhile; and
    this process's minor page faults and system CPU time, where a model whose batches free more
    than the heap keeps (VGG-19: 3-4 GB) pays for faulting the pages back (a heap laid out
    differently from one run to the next moves its layers' time by 10-20 %)."""

    def __enter__(self) -> Meter:
        self._r0 = resource.getrusage(resource.RUSAGE_SELF)
        self._j0 = _busy_jiffies()
        self._c0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        self.faults = r1.ru_minflt - self._r0.ru_minflt
        self.sys = r1.ru_stime - self._r0.ru_stime
        j1 = _busy_jiffies()
        if self._j0 is None or j1 is None:
            self.others_cpu = float("nan")
        else:
            self.others_cpu = max(0.0, (j1[0] - self._j0[0]) / _HZ - self.cpu)

    def as_dict(self) -> dict[str, float]:
        return {"wall": self.wall, "cpu": self.cpu, "others_cpu": self.others_cpu, "faults": self.faults,
                "sys": self.sys}
