"""The README and docs/ stay true: links resolve, the examples print what they show, the API
example runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings."""
    anchors = set()
    for line in page.read_text("utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(page.read_text("utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked (no network in tests)
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{page.name}: {target} (no such heading)")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    assert _broken_links(page) == []


def test_the_link_check_can_fail(tmp_path):
    """A link to a missing file or heading is reported."""
    page = tmp_path / "p.md"
    page.write_text("# Title\n[a](missing.md) [b](#title) [c](#nothing) [d](https://x.y)\n")
    assert _broken_links(page) == ["p.md: missing.md (no such file)",
                                   "p.md: #nothing (no such heading)"]


def test_docs_pages_are_all_linked_from_the_readme():
    """Every page of docs/ can be found from the README."""
    readme = (ROOT / "README.md").read_text("utf-8")
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, page.name


def test_readme_is_short():
    """The README is for people: under 150 lines, the rest in docs/."""
    assert len((ROOT / "README.md").read_text("utf-8").splitlines()) < 150


# ------------------------------------------------------------------ examples


def _blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text("utf-8"), flags=re.S)


def _console_examples() -> list[tuple[str, list[str]]]:
    """(command, the output lines shown) for each ``$ onnxcollide ...`` in the README."""
    examples = []
    for block in _blocks(ROOT / "README.md", "console"):
        lines = block.rstrip("\n").split("\n")
        assert lines[0].startswith("$ onnxcollide "), lines[0]
        examples.append((lines[0][2:], lines[1:]))
    return examples


def _shape(line: str) -> str:
    """A line with its numbers and column widths taken out (their digits vary with the
    machine's float rounding; the labels, verdicts and structure do not)."""
    line = re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "N", line.rstrip())
    line = re.sub(r"([─━═])\1+", r"\1", line)
    return re.sub(r" +", " ", line)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with the shipped models, where the README's examples run in order."""
    folder = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "models", folder / "models")
    return folder


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    args = command.split()[1:]
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "onnxcollide", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_readme_examples_print_what_they_show(workdir):
    """Each console example of the README runs and prints what it shows: audits and checks
    exactly (a check whose output says 'check failed' exits 1), collide and validate up to the
    digits of their float32 residuals (validate reads what collide saved). A line ``...``
    stands for the rest of the output."""
    for command, shown in _console_examples():
        done = _run(command, workdir)
        failed = any(line.startswith("check failed:") for line in shown)  # the gate's exit 1
        assert done.returncode == (1 if failed else 0), (command, done.stderr)
        printed = done.stdout.rstrip("\n").split("\n")
        if "..." in shown:
            printed = printed[:shown.index("...")]
            shown = shown[:shown.index("...")]
        if command.startswith(("onnxcollide audit", "onnxcollide check")):
            assert printed == shown, command
        else:
            assert [_shape(line) for line in printed] == [_shape(line) for line in shown], \
                command


def test_api_example_prints_what_the_page_shows():
    """docs/api.md's example runs from the repository root and prints its output block."""
    page = ROOT / "docs" / "api.md"
    code = _blocks(page, "python")[0]
    shown = _blocks(page, "text")[0]
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == shown


NEEDS_OTHER_ENV = {  # scripts whose imports live outside the test environment, and why
    "make_models.py": "torch (fixture models: its own venv)",
    "make_pairs.py": "torch (fixture models: its own venv)",
    "make_test_fixtures.py": "torch (fixture models: its own venv)",
    "fuzz_loader_atheris.py": "atheris (the [fuzz] extra; it takes libFuzzer options)",
}
ALL_SCRIPTS = sorted(path.name for path in (ROOT / "scripts").glob("*.py"))


def test_the_scripts_left_out_exist():
    assert set(NEEDS_OTHER_ENV) <= set(ALL_SCRIPTS)


@pytest.mark.parametrize("script", [name for name in ALL_SCRIPTS if name not in NEEDS_OTHER_ENV])
def test_every_script_the_docs_name_starts(script):
    """``python scripts/X.py --help`` works for every script the docs tell people to run, so
    an import that a refactoring broke (a builder moved to another script) shows here, not
    when someone first reruns a benchmark."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"],
                            capture_output=True, text=True, check=False, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def test_the_api_page_names_every_public_name():
    """docs/api.md's table left out compare_models, CompareSettings, Comparison and
    read_inputs; every name the package root exports is on the page now."""
    import onnxcollide

    page = (ROOT / "docs" / "api.md").read_text("utf-8")
    missing = [name for name in onnxcollide._PUBLIC
               if not re.search(rf"[`( ]{name}\b", page)]
    assert missing == []
