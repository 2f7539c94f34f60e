"""The command line in the environments users have, not only the test machine's (root, a UTF-8
locale, a writable HOME and /tmp, output to pipes): a locale whose encoding is ASCII, stdout that
cannot hold a character or is closed, a current folder that was removed, a `~` the shell left as it
was, a narrow COLUMNS, a temporary folder that is full. Each case once said nothing, the wrong
thing, or a traceback."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sketchmine
from sketchmine.data import ArrayDataset, export_image_folder

ASCII_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
"""A locale whose file names and streams are ASCII (Python's UTF-8 mode, on by default under C, off)."""

NAMES = ["bär", "中文", "café é", "🐱 cat", "-dash", "quo'te", "100% #1", "what?&", "<b>x", "über"]


def sm(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
       shell_prefix: str = "") -> subprocess.CompletedProcess:
    """`sketchmine ARGS` in a subprocess with `env` added to this one's; output as bytes (a stream
    in another encoding is part of what is tested). `shell_prefix`: sh commands run first (cd into
    a folder and remove it) and redirections, which the command then inherits."""
    full = {**os.environ, **(env or {})}
    if shell_prefix:
        line = " ".join(["exec", sys.executable, "-m", "sketchmine", *(_sh_quote(a) for a in args)])
        return subprocess.run(["sh", "-c", f"{shell_prefix} {line}"], capture_output=True, env=full, cwd=cwd,
                              timeout=600)
    return subprocess.run([sys.executable, "-m", "sketchmine", *args], capture_output=True, env=full, cwd=cwd,
                          timeout=600)


def _sh_quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def _fs_encoding(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"],
                         capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    return out.stdout.strip().lower().replace("-", "")


@pytest.fixture(scope="module")
def ascii_locale() -> dict[str, str]:
    """The environment of a locale whose file system encoding is ASCII (skipped where the platform
    decodes file names as UTF-8 whatever the locale, as macOS does)."""
    if _fs_encoding(ASCII_LOCALE) == "utf8":
        pytest.skip("this platform reads file names as UTF-8 under every locale")
    return ASCII_LOCALE


def _images(ds, root: Path, names: list[str] | None = None, per_class: int = 3) -> Path:
    pick = np.concatenate([np.nonzero(ds.labels() == c)[0][:per_class] for c in range(len(ds.class_names))])
    sub = ArrayDataset(ds.images[pick], ds.labels()[pick], names or ds.class_names, ds.preprocessing, ds.describe())
    return export_image_folder(sub, root)


@pytest.fixture(scope="module")
def unicode_run(tmp_path_factory, demo_test_set) -> Path:
    """A run (two layers, 30 real images) named, as its class folders are, in UTF-8 beyond ASCII
    (markup and shell characters among them), under an ASCII-named root."""
    base = tmp_path_factory.mktemp("unicode")
    data = _images(demo_test_set, base / "images", NAMES)
    return sketchmine.mine("demo", str(data), layers=["features.0", "classifier.6"], k=3, out=base / "rün.zarr").path


@pytest.fixture(scope="module")
def unicode_root_run(tmp_path_factory, demo_test_set) -> Path:
    """A run whose dataset root is named in UTF-8 beyond ASCII (its classes are not)."""
    base = tmp_path_factory.mktemp("unicode_root")
    data = _images(demo_test_set, base / "bilder-ä", per_class=2)
    return sketchmine.mine("demo", str(data), layers=["classifier.6"], k=3, out=base / "run.zarr").path


@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii"}, ASCII_LOCALE], ids=["ascii-stdout", "C-locale"])
@pytest.mark.parametrize("command", [["summary"], ["unit", "classifier.6", "3"], ["verify"]])
def test_json_stays_json_on_an_ascii_stdout(unicode_run, env, command):
    """`--json` on a stream that cannot hold é or 中 gave the stream's backslash escapes ("caf\\xe9"):
    invalid JSON, so `| jq` failed on a run whose command exited 0. JSON's own \\u escapes now."""
    proc = sm(command[0], str(unicode_run), *command[1:], "--json", env=env)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    data = json.loads(proc.stdout)  # raised "Invalid \escape"
    text = json.dumps(data, ensure_ascii=False)
    if command[0] != "verify":
        assert any(name in text for name in NAMES if not name.isascii()), text[:500]


def test_mine_into_a_non_ascii_folder_under_an_ascii_locale(tmp_path, demo_test_set, ascii_locale):
    """Under an ASCII locale `mine --out ré.zarr` died with a UnicodeEncodeError traceback writing its
    creation marker (in the locale's encoding): the run is made, its name's bytes as given."""
    data = _images(demo_test_set, tmp_path / "images", per_class=1)
    out = os.fsencode(tmp_path) + "/ré.zarr".encode()
    proc = sm("mine", "--model", "demo", "--data", str(data), "--layers", "classifier.6", "--out",
              os.fsdecode(out), env=ascii_locale)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"Traceback" not in proc.stderr
    assert os.path.isdir(out) and not [n for n in os.listdir(tmp_path) if n.startswith(".ré.zarr.creating")]


@pytest.mark.parametrize("which", ["class folders", "dataset root"])
def test_a_locale_that_cannot_name_the_images_is_said(unicode_run, unicode_root_run, ascii_locale, which):
    """A run mined under a UTF-8 locale, visualized under an ASCII one: its images were called missing
    ("pass --data DIR if the images moved"; the root "does not exist") though every file is there.
    The error says the locale is the cause and how to change it."""
    run = unicode_run if which == "class folders" else unicode_root_run
    proc = sm("visualize", str(run), "--layers", "classifier.6", env=ascii_locale)
    err = proc.stderr.decode("ascii", errors="replace")
    assert proc.returncode == 3 and "Traceback" not in err, err
    assert "UTF-8 locale" in err and "is on disk" in err, err
    assert "missing" not in err and "does not exist" not in err, err


def test_a_tilde_the_shell_left_is_the_home_folder(tmp_path, demo_test_set):
    """bash leaves `--out=~/r.zarr` (and a quoted '~/…') as it is: the run went into a new folder named
    `~` in the current folder, reported as "→ ~/r.zarr", and `--data=~/pics` "did not exist"."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    _images(demo_test_set, home / "pics", per_class=1)
    proc = sm("mine", "--model", "demo", "--data=~/pics", "--layers", "classifier.6", "--out=~/r.zarr",
              env={"HOME": str(home)}, cwd=work)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (home / "r.zarr").is_dir() and not (work / "~").exists()
    assert str(home / "r.zarr") in "".join(proc.stdout.decode().split())  # a long path wraps in the table
    from sketchmine.cli.environment import user_path

    assert user_path("~backup/x") == "~backup/x"  # a folder's name, not the backup user's home
    proc = sm("summary", "~/r.zarr", "--json", env={"HOME": str(home)}, cwd=work)
    assert proc.returncode == 0 and json.loads(proc.stdout)["images"] == 10, proc.stderr.decode()


def test_a_removed_current_folder_is_said(tmp_path):
    """In a folder removed after the shell entered it, importing torch died with "Intel oneMKL FATAL
    ERROR: Cannot load libtorch_cpu.so" and exit code 2 (a usage error); `mine` without --out would
    have written there. One line naming the folder, before anything loads."""
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = sm("mine", "--model", "demo", "--data", str(tmp_path), shell_prefix=f"cd {gone} && rmdir {gone} &&",
              env={"PWD": str(gone)})
    err = proc.stderr.decode()
    assert proc.returncode == 3 and err.startswith("sketchmine: error:"), err
    assert "no longer exists" in err and str(gone) in err, err


def test_a_removed_current_folder_refuses_only_what_needs_it(unicode_run, tmp_path):
    """`summary /abs/run.zarr` in a removed current folder was refused ("cd to an existing folder")
    although it needs no folder; a command given absolute paths runs there now (`mine` too, whose
    torch cannot load in a removed folder, and `report` again over its own report), and one given a
    relative path is refused naming it."""
    def in_removed_folder(*args: str) -> subprocess.CompletedProcess:
        gone = tmp_path / f"gone-{len(list(tmp_path.iterdir()))}"
        gone.mkdir()
        return sm(*args, shell_prefix=f"cd {gone} && rmdir {gone} &&", env={"PWD": str(gone)})

    proc = in_removed_folder("summary", str(unicode_run), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["images"] == 30, proc.stderr.decode()
    proc = in_removed_folder("mine", "--model", "demo", "--data", str(unicode_run.parent / "images"), "--layers", "classifier.6", "--out",
                             str(tmp_path / "abs.zarr"))
    assert proc.returncode == 0 and sketchmine.open_run(tmp_path / "abs.zarr").complete, proc.stderr.decode()
    for _ in range(2):  # a second time replaces the first report, which read the current folder (Path.cwd)
        proc = in_removed_folder("report", str(tmp_path / "abs.zarr"), "--no-probe", "--out", str(tmp_path / "rep"))
        assert proc.returncode == 0 and (tmp_path / "rep" / "index.html").is_file(), proc.stderr.decode()
    proc = in_removed_folder("summary", "run.zarr")
    err = proc.stderr.decode()
    assert proc.returncode == 3 and "no longer exists" in err and "RUN run.zarr is relative to it" in err, err


@pytest.mark.parametrize("args", [["summary"], ["verify", "--json"]])
def test_a_closed_stdout_is_said(unicode_run, args):
    """`sketchmine summary RUN >&-` exited 0 having printed nothing anywhere, and `--json` ended in an
    AttributeError traceback ('NoneType' object has no attribute 'write')."""
    proc = sm(args[0], str(unicode_run), *args[1:], shell_prefix=">&-")
    err = proc.stderr.decode()
    assert proc.returncode == 3 and "Traceback" not in err, err
    assert "standard output is closed" in err, err


def test_a_narrow_columns_keeps_the_layer_names(unicode_run):
    """COLUMNS=20 made rich shrink `summary`'s layer column to nothing: no layer name anywhere in its
    tables. The console is never drawn narrower than MIN_COLUMNS (lines wrap, nothing is left out)."""
    proc = sm("summary", str(unicode_run), env={"COLUMNS": "20"})
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    layer_cells = "".join(line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│ fea"))
    assert "features.0" in layer_cells, out[:2000]


def test_the_probe_needs_no_temporary_folder(unicode_run, tmp_path, monkeypatch):
    """The probe's ONNX graph went through a file in TMPDIR: on a full disk (or a TMPDIR that does
    not exist) the probe said "torch.onnx cannot export the model …: [Errno 28]", which reads as the
    model's fault. It is exported into memory."""
    import tempfile

    from sketchmine.passes.probe import build_probe

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    files = build_probe(str(unicode_run))
    assert "model.js" in files and any(name.startswith("graph-") for name in files), sorted(files)


def test_a_pasted_command_names_a_dash_run_as_a_path(tmp_path, unicode_run):
    """The commands messages name quoted a run called `-r.zarr` as it is, which the pasted command
    then read as an option (`sketchmine importance -r.zarr --layers …`: unrecognized arguments)."""
    import shutil

    shutil.copytree(unicode_run, tmp_path / "-r.zarr")
    proc = sm("unit", "--", "-r.zarr", "classifier.6", "1", cwd=tmp_path)
    out = " ".join(proc.stdout.decode().split())
    assert proc.returncode == 0, proc.stderr.decode()
    assert "sketchmine importance ./-r.zarr --layers classifier.6" in out, out[-800:]


def test_no_home_folder_is_made_for_the_cache(tmp_path, monkeypatch):
    """HOME=/nonexistent is how a user without a home is run (Debian's nobody, containers): the
    fingerprint cache made /nonexistent/.cache/sketchmine, as root at the file system's top. The
    cache is then kept in memory only."""
    from sketchmine.data.folder import content_hashes

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"an image")
    monkeypatch.setenv("HOME", str(tmp_path / "nonexistent"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert content_hashes(tmp_path / "images", ["a.png"]) == [hashlib.blake2b(b"an image", digest_size=16).hexdigest()]
    assert not (tmp_path / "nonexistent").exists()
    monkeypatch.setenv("HOME", str(tmp_path))  # a home that exists gets its cache as before
    (tmp_path / "images" / "b.png").write_bytes(b"another")
    content_hashes(tmp_path / "images", ["b.png"])
    assert list((tmp_path / ".cache" / "sketchmine" / "fingerprints").glob("*.json"))


def test_no_home_folder_is_made_by_the_report(unicode_run, tmp_path):
    """With HOME=/nonexistent, `report` made HOME/.cache/matplotlib (its font list) and
    HOME/.cache/Microsoft/DeveloperTools/.onnxruntime (ONNX Runtime's device id, for the live
    probe), HOME itself with them. Their caches go to a temporary folder now, removed at the end."""
    home, tmp = tmp_path / "nonexistent", tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")}
    proc = subprocess.run([sys.executable, "-m", "sketchmine", "report", str(unicode_run), "--out", str(tmp_path / "r")],
                          capture_output=True, env={**env, "HOME": str(home), "TMPDIR": str(tmp)}, timeout=600)
    assert proc.returncode == 0 and (tmp_path / "r" / "index.html").is_file(), proc.stderr.decode()
    assert not home.exists() and not list(tmp.glob("sketchmine-*")), sorted(p.name for p in tmp_path.rglob("*"))[:20]
    assert b"Matplotlib" not in proc.stderr, proc.stderr.decode()


def test_a_malformed_slide_worker_count_refuses_the_demo_before_it_mines(tmp_path):
    """SKETCHMINE_SLIDE_WORKERS=many was read at the first report: `demo` mined, visualized and
    ranked for minutes, then ended on it. It is refused before anything is done or written."""
    proc = sm("demo", "--out", str(tmp_path / "demo"), env={"SKETCHMINE_SLIDE_WORKERS": "many"})
    err = proc.stderr.decode()
    assert proc.returncode == 3 and "SKETCHMINE_SLIDE_WORKERS should be a number of processes" in err, err
    assert not (tmp_path / "demo").exists()
