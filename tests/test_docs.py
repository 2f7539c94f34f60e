"""Every code block of the README and of docs/*.md runs, and the numbers it documents hold.

Blocks fenced `python` run in order in one namespace per page, in a fresh directory; a line
`expression  # → VALUE` also checks that the expression equals VALUE (numbers to the digits
written). Blocks fenced `bash` run command by command in the same directory (`make` targets
as a dry run: the set-up itself is what CI runs); `# → TEXT` after a command checks that its
output holds TEXT. Blocks fenced `text` are diagrams, or commands with placeholders in
capitals (DIR, HOST0): shown, not run. No other fence is allowed, so a new example cannot slip past.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
CHECK = re.compile(r"^(?P<code>[^#\n]*?\S)\s+#\s*→\s*(?P<want>.+?)\s*$")
RUN, TEMPLATE = {"python", "bash"}, {"text"}


def blocks(page: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(page.read_text())]


def same(got: object, want: str) -> bool:
    """`got` written as `want`: a number to the digits written (97.05 % as 0.9705 too),
    else its str or repr."""
    text = want.strip()
    number = re.fullmatch(r"(-?\d+(?:\.(\d+))?)\s*(%?)", text)
    if number and isinstance(got, (int, float)) and not isinstance(got, bool):
        value, digits = float(number.group(1)), len(number.group(2) or "")
        if number.group(3):
            value, digits = value / 100, digits + 2
        return math.isclose(round(float(got), digits), value, abs_tol=10 ** -(digits + 6))
    return text in (str(got), repr(got))


def python_source(code: str) -> str:
    """The block with each `expression  # → VALUE` line turned into a check."""
    out = []
    for line in code.splitlines():
        m = CHECK.match(line)
        if m and not line.startswith((" ", "\t")):
            out.append(f"__check__(({m.group('code')}), {m.group('want')!r}, {line!r})")
        else:
            out.append(line)
    return "\n".join(out)


def commands(code: str) -> list[tuple[str, str | None]]:
    """(command, expected text or None) per command of a bash block, continuation lines joined."""
    joined = re.sub(r"\s*\\\n\s*", " ", code)
    result = []
    for line in joined.splitlines():
        want = None
        m = re.search(r"#\s*→\s*(.+)$", line)
        if m:
            want = m.group(1).strip()
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            result.append((line, want))
    return result


def test_every_block_runs_or_is_a_template():
    for page in PAGES:
        for lang, code in blocks(page):
            assert lang in RUN | TEMPLATE, f"{page.name}: a block fenced {lang!r} is neither run nor a template"
            commandlike = re.match(r"\s*(#.*\n\s*)*(sketchmine|python3?|torchrun|make|pip|bash|npm|scripts/|\.venv/)",
                                   code)
            if lang in TEMPLATE and commandlike:  # a command shown, not run, must say what to fill in
                assert re.search(r"\b[A-Z][A-Z0-9_]{1,}\b", code), \
                    f"{page.name}: a `text` command without a placeholder should be run: {code[:80]!r}"


def test_check_lines_compare_numbers_to_their_digits():
    assert same(0.97049999, "97.05 %") and same(0.9705, "0.9705") and not same(0.9714, "97.05%")
    assert same(10, "10") and same("features.0", "features.0") and not same(3, "4")
    assert python_source("x = 1\nx + 1  # → 2").splitlines()[1].startswith("__check__((x + 1), '2'")
    assert commands("a --b \\\n   c  # → ok\n# comment only\n") == [("a --b c", "ok")]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_blocks_run_and_their_numbers_hold(page, tmp_path):
    runnable = [(lang, code) for lang, code in blocks(page) if lang in RUN]
    if not runnable:
        pytest.skip(f"{page.name} has no runnable block")
    checked: list[str] = []

    def check(got: object, want: str, line: str) -> None:
        assert same(got, want), f"{page.name}: `{line.strip()}` gave {got!r}, the page says {want}"
        checked.append(line)

    namespace: dict[str, object] = {"__name__": "__docs__", "__check__": check}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        for lang, code in runnable:
            if lang == "python":
                exec(compile(python_source(code), f"{page.name}:python", "exec"), namespace)  # noqa: S102
                continue
            for command, want in commands(code):
                argv = shlex.split(command)
                if argv[0] == "make":  # the set-up: checked as a dry run against the Makefile
                    argv = ["make", "-n", "-C", str(ROOT), *argv[1:]]
                proc = subprocess.run(argv if argv[0] == "make" else command, shell=argv[0] != "make",
                                      capture_output=True, text=True, env=env, timeout=900)
                assert proc.returncode == 0, f"{page.name}: `{command}` failed:\n{proc.stderr[-2000:]}"
                if want is not None:
                    assert want in proc.stdout + proc.stderr, f"{page.name}: `{command}` did not print {want!r}"
                    checked.append(command)
    finally:
        os.chdir(cwd)
