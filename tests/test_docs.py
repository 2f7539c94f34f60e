"""Every code block of the README and of docs/*.md runs, and the numbers it documents hold.

Blocks fenced `python` run in order in one namespace per page, in a fresh directory; a line
`expression  # → VALUE` also checks that the expression equals VALUE (numbers to the digits
written). Blocks fenced `bash` run command by command in the same directory (`make` targets
as a dry run: the set-up itself is what CI runs); `# → CLAIM` after a command is checked by
the one entry of BASH_CLAIMS whose pattern the claim matches, on the field it names (the
command's `--json` or the run it wrote), not as a substring of the output: "bird" is printed by
any summary of this dataset. A claim no entry reads fails, and every claim of a page must have
been checked. Blocks fenced `text` are diagrams, or commands with placeholders in capitals
(DIR, HOST0): shown, not run. No other fence is allowed, so a new example cannot slip past.
"""
from __future__ import annotations

import json
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


def _json(command: str, env: dict[str, str]) -> dict:
    """The command's `--json` document (run again with --json when it was shown without)."""
    argv = shlex.split(command) + ([] if "--json" in command else ["--json"])
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"`{command} --json` failed:\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def _out(command: str) -> str:
    return shlex.split(command)[shlex.split(command).index("--out") + 1]


def _mined(command, m, output, env):
    import sketchmine

    run = sketchmine.open_run(_out(command))
    assert run.complete
    if m["what"] == "accuracy":
        assert same(run.accuracy(), m["value"]), f"accuracy {run.accuracy()}, the page says {m['value']}"
        assert re.search(rf"accuracy {re.escape(m['value'])}(?!\d)", output)  # and mine says it so
    else:
        assert run.images_done == int(m["value"]), f"{run.images_done} images, the page says {m['value']}"


def _top_class(command, m, output, env):
    layers = {layer["name"]: layer for layer in _json(command, env)["layers"]}
    top = layers[m["layer"]]["top_classes"][0]["class"]
    assert top == m["cls"], f"the top class of {m['layer']} is {top}, the page says {m['cls']}"


def _compare(command, m, output, env):
    acc = _json(command, env)["accuracy"]
    for side in ("a", "b"):
        assert same(acc[side], m[side]), f"run {side.upper()}: accuracy {acc[side]}, the page says {m[side]}"
        assert f"({m[side]})" in output  # the table's title says it so


def _unit_max(command, m, output, env):
    d = _json(command, env)
    assert same(d["max"], m["value"]), f"max activation {d['max']}, the page says {m['value']}"
    assert re.search(rf"max activation\b[^\n]*\s{re.escape(m['value'])}\b", output)  # the row says it so


def _json_field(command, m, output, env):
    got = _json(command, env)[m["key"]]
    assert got == json.loads(m["value"]), f"{m['key']} is {got!r}, the page says {m['value']}"


def _version(command, m, output, env):
    assert output.strip() == m["text"], f"printed {output.strip()!r}, the page says {m['text']!r}"


BASH_CLAIMS = [
    (r"sketchmine mine .*--out ", r"(?P<what>accuracy) (?P<value>[\d.]+ ?%)|(?P<value2>\d+) (?P<what2>images)", _mined),
    (r"sketchmine summary ", r"top class of (?P<layer>\S+): (?P<cls>\S+)", _top_class),
    (r"sketchmine compare ", r"(?:accuracy: )?A \(?(?P<a>[\d.]+ %)\)? vs B \(?(?P<b>[\d.]+ %)\)?", _compare),
    (r"sketchmine unit (?!.*--json)", r"max activation (?P<value>-?[\d.]+)", _unit_max),
    (r"sketchmine unit .*--json", r'"(?P<key>\w+)": (?P<value>[^,]+),?', _json_field),
    (r"sketchmine --version", r"(?P<text>sketchmine \S+)", _version),
]
"""(command pattern, claim pattern, check(command, claim match, output, env)): what a bash
`# → CLAIM` means and how it is checked."""


def check_bash_claim(command: str, want: str, output: str, env: dict[str, str]) -> None:
    for cmd, claim, fn in BASH_CLAIMS:
        m = re.fullmatch(claim, want) if re.match(cmd, command) else None
        if m:
            groups = {k.rstrip("2"): v for k, v in m.groupdict().items() if v is not None}
            return fn(command, groups, output, env)
    raise AssertionError(f"`{command}  # → {want}`: no BASH_CLAIMS entry reads this claim; add one that "
                         "checks the field it names")


def claims(page: Path) -> list[str]:
    """Every `# →` claim of the page's runnable blocks: python lines and bash commands."""
    found = []
    for lang, code in blocks(page):
        if lang == "python":
            found += [line for line in code.splitlines() if CHECK.match(line) and not line.startswith((" ", "\t"))]
        elif lang == "bash":
            found += [command for command, want in commands(code) if want is not None]
    return found


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


def test_a_bash_claim_is_read_by_one_specific_check():
    """A claim no entry reads fails (no substring search: "bird" is in any summary), and an
    entry checks its field: the version line whole, not a part of it."""
    env = dict(os.environ)
    with pytest.raises(AssertionError, match="no BASH_CLAIMS entry reads this claim"):
        check_bash_claim("sketchmine summary run.zarr", "bird", "... bird ...", env)
    check_bash_claim("sketchmine --version", "sketchmine 0.1.0", "sketchmine 0.1.0\n", env)
    with pytest.raises(AssertionError, match="printed 'sketchmine 0.1.0.dev3'"):
        check_bash_claim("sketchmine --version", "sketchmine 0.1.0", "sketchmine 0.1.0.dev3\n", env)


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
                    try:
                        check_bash_claim(command, want, proc.stdout + proc.stderr, env)
                    except AssertionError as exc:
                        raise AssertionError(f"{page.name}: `{command}  # → {want}`: {exc}") from None
                    checked.append(command)
    finally:
        os.chdir(cwd)
    assert sorted(checked) == sorted(claims(page)), f"{page.name}: claims not checked"
