"""The report's slides drawn in worker processes. A slide is about a tenth of a second of
matplotlib, which holds the GIL, so threads cannot share the work: drawn one after another the
slides were two thirds of a report's time (eight a layer).

The workers are plain subprocesses of this module, sent `(slide content, path)` pickles on their
stdin and answering each with an empty frame or the pickled exception. Not `multiprocessing`:
its spawn and forkserver workers import the caller's `__main__`, which runs a user's script again
where it lacks the `if __name__ == "__main__":` guard, and fork copies a process whose threads
(Zarr's event loop, the PNG writers) may hold locks. A few slides are drawn here: a worker takes
most of a second to start. SKETCHMINE_SLIDE_WORKERS sets the number of workers (0: none).
"""
from __future__ import annotations

import os
import pickle
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import warnings
from collections import deque
from pathlib import Path
from queue import Queue
from types import TracebackType
from typing import IO, Any

from sketchmine.cores import usable_cores
from sketchmine.ctrl_c import held
from sketchmine.errors import SketchmineError

MIN_SLIDES = 40
"""Fewer slides are drawn in this process: a worker's start costs about a second of CPU, ten
slides. Measured on 2 cores (the demo model's report, 8 slides a layer; benchmarks/RESULTS.md):
16 slides 2.64 s here, 2.75 s with two workers (and 1.7 s more CPU); 32 slides 5.1 s and 4.5 s
(2.2 s more CPU); 72 slides 10.3 s and 7.1 s."""
PER_WORKER = 20
"""Slides per worker at least, so that its start is at most half of its work."""
IN_FLIGHT = 3
"""Slides sent to one worker and not yet answered: enough to keep it busy, few in memory."""
ENV = "SKETCHMINE_SLIDE_WORKERS"
_HEADER = struct.Struct("<Q")


def wanted_workers() -> int | None:
    """SKETCHMINE_SLIDE_WORKERS as a number, None when unset; refused when it is not one (checked
    again before `demo` mines, so a typo does not end it at the report, minutes in)."""
    setting = os.environ.get(ENV, "").strip()
    if not setting:
        return None
    try:
        return int(setting)
    except ValueError:
        raise SketchmineError(f"{ENV} should be a number of processes (0: none), found {setting!r}") from None


def worker_count(slides: int) -> int:
    """Workers for a report of `slides` slides: one per core (at most 8), none for a few
    slides or one core; SKETCHMINE_SLIDE_WORKERS, when set, is the number."""
    if (wanted := wanted_workers()) is not None:
        return max(0, min(wanted, slides))
    cores = usable_cores()
    if slides < MIN_SLIDES or cores < 2:
        return 0
    return min(cores, 8, slides // PER_WORKER)


def _send(stream: IO[bytes], payload: bytes) -> None:
    """One frame, whole (an unbuffered pipe may take part of a write)."""
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        view = view[stream.write(view) or 0:]
    stream.flush()


def _read(stream: IO[bytes], size: int) -> bytes | None:
    parts, left = [], size
    while left:
        part = stream.read(left)
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _receive(stream: IO[bytes]) -> bytes | None:
    """One frame, None at the end of the stream. The report's ends of the pipes are unbuffered,
    so a frame the selector has not seen is never left in a buffer."""
    head = _read(stream, _HEADER.size)
    return None if head is None else _read(stream, _HEADER.unpack(head)[0])


def _pickled(exc: BaseException) -> bytes:
    try:
        return pickle.dumps(exc)
    except Exception:  # an exception whose arguments do not pickle: its words
        return pickle.dumps(SketchmineError(f"{type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.log = tempfile.TemporaryFile()  # its stderr: a pipe nobody reads could fill and stall it
        code = f"import sys; sys.path[:0] = {[p for p in sys.path if p]!r}; " \
               "from sketchmine.present.slide_workers import serve; serve()"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, bufsize=0)
        self.sent: deque[str] = deque()  # what each unanswered slide is, for messages
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        try:
            _send(self.stdin, pickle.dumps(settings))
        except OSError:  # it stopped at once: not left running beside the report
            self.close(kill=True)
            raise

    def stopped(self) -> SketchmineError:
        """The error for a worker that stopped answering (its exit status and last words)."""
        self.proc.kill()
        status = self.proc.wait()
        self.log.seek(0)
        words = self.log.read().decode(errors="replace").strip().splitlines()[-1:]
        return SketchmineError(f"the process drawing the report's slides stopped (exit status {status}"
                               f"{': ' + words[0] if words else ''}) while it drew {self.sent[0] if self.sent else 'none'}; "
                               f"{ENV}=0 draws them in the report's own process")

    def close(self, kill: bool) -> None:
        """End the worker: its stdin closed (it ends when its slides are drawn), or killed."""
        if kill:
            self.proc.kill()
        try:
            self.stdin.close()
        except OSError:  # the worker has gone
            pass
        self.proc.wait()
        self.stdout.close()
        self.log.close()


class SlideWriter:
    """Draws unit slides (`submit`) and writes them as PNGs, in worker processes where a report
    has enough of them, else here. Leaving the `with` block waits for every slide and raises the
    first error (a full disk) there; an exception inside it stops the workers at once."""

    def __init__(self, slides: int) -> None:
        from matplotlib import rcParams

        from sketchmine.present.montage import Slides

        self._here = Slides()
        self._workers: list[_Worker] = []
        self._count = worker_count(slides)
        # the caller's style (a notebook's rcParams) draws the slides alike wherever they are drawn
        self._settings = {"rc": {k: v for k, v in rcParams.items() if not k.startswith("backend")}}
        self._selector = selectors.DefaultSelector()

    def submit(self, content: Any, path: Path, what: str) -> None:
        """Draw the slide of `content` (`montage.slide_content`) into `path`; `what`: the unit, for
        messages."""
        from sketchmine.present.montage import write_slide

        if self._count and not self._workers:
            self._start()
        if not self._workers:
            write_slide(self._here.draw(content), path)
            return
        worker = min(self._workers, key=lambda w: len(w.sent))
        while len(worker.sent) >= IN_FLIGHT:
            self._answer()
            worker = min(self._workers, key=lambda w: len(w.sent))
        try:
            _send(worker.stdin, pickle.dumps((content, str(path)), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            raise worker.stopped() from None
        worker.sent.append(what)

    def _start(self) -> None:
        try:
            for _ in range(self._count):
                worker = _Worker(self._settings)
                self._workers.append(worker)
                self._selector.register(worker.stdout, selectors.EVENT_READ, worker)
        except OSError:  # no process can be started here: every slide is drawn in this one
            self._close(kill=True)
            self._count = 0

    def _answer(self) -> None:
        """Wait for one answer from any worker; raise the exception a slide met."""
        for key, _ in self._selector.select():
            worker: _Worker = key.data
            frame = _receive(worker.stdout)
            if frame is None:
                raise worker.stopped()
            worker.sent.popleft()
            if frame:
                raise pickle.loads(frame)  # noqa: S301  (our own worker's answer)
            return

    def _close(self, kill: bool) -> None:
        if kill:
            self._kill_all()
        for worker in self._workers:
            self._selector.unregister(worker.stdout)
            worker.close(kill)
        self._workers = []
        self._selector.close()

    def _kill_all(self) -> None:
        """Kill every worker before any is waited for, a Ctrl-C (or SIGTERM) meanwhile held and
        raised after. Killed one at a time, a second Ctrl-C just after the first kill (the report
        already interrupted) left the other workers drawing the slides they had been sent: they
        wrote them into the report's staging folder after the report had removed it, making it
        again, unmarked, and no later report removed it."""
        with held() as came:
            for worker in self._workers:
                worker.proc.kill()
        if came:
            signal.raise_signal(came[-1])

    def __enter__(self) -> SlideWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            while exc is None and any(w.sent for w in self._workers):
                self._answer()
        except BaseException:
            self._close(kill=True)
            raise
        self._close(kill=exc is not None)


def serve() -> None:
    """A worker's loop: settings, then (content, path) frames until stdin ends; each answered
    with b"" or the pickled exception the slide met. Frames are read on a thread, so the report
    is not held up writing the next one while this draws."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the report, which stops this
    # the answers go to the pipe; anything else written to stdout (a library's print) to stderr
    stdin, stdout = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from matplotlib import rcParams

    from sketchmine.present.montage import Slides, write_slide

    settings = _receive(stdin)
    if settings is None:
        return
    with warnings.catch_warnings():  # settings matplotlib has deprecated: set as the caller had them
        warnings.simplefilter("ignore")
        rcParams.update(pickle.loads(settings)["rc"])
    frames: Queue[bytes | None] = Queue()

    def read() -> None:
        while (frame := _receive(stdin)) is not None:
            frames.put(frame)
        frames.put(None)

    threading.Thread(target=read, daemon=True).start()
    slides = Slides()
    while (frame := frames.get()) is not None:
        try:
            content, path = pickle.loads(frame)
            write_slide(slides.draw(content), Path(path))
            answer = b""
        except Exception as exc:  # the report raises it, as if the slide were drawn there
            answer = _pickled(exc)
        _send(stdout, answer)
