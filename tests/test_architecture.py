"""The package's shape: stages in data-flow order, no import circles, onnx and onnxruntime
imported where DESIGN.md says, the public API at the package root, the install extras."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "onnxcollide"

# Stages in the order data flows; a module may import from its own stage and those before it.
# errors, _version and limits are the foundation every stage may use.
STAGES = ("errors", "_version", "limits", "graph", "linalg", "audit", "collide", "runtime",
          "policy", "compare", "report", "cli")
FOUNDATION = {"errors", "_version", "limits"}
ONNX_ALLOWED = {"graph", "runtime"}  # parsing; building the graphs ONNX Runtime runs
ORT_ALLOWED = {"runtime"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module an import statement of the file names (top level, nested, TYPE_CHECKING),
    with its line; ``from pkg import mod`` also names ``pkg.mod``."""
    names = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append((node.module, node.lineno))
            names += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return names


def _stage(module: str) -> str | None:
    """The stage a module of the package belongs to (None for the package root itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else None


def stage_violations(modules: dict[str, Path]) -> list[str]:
    """Imports from a stage above the importing module's own."""
    wrong = []
    for module, path in modules.items():
        stage = _stage(module)
        if stage is None or stage in FOUNDATION or stage not in STAGES:
            continue
        for name, line in _imports(path):
            other = _stage(name) if name.startswith("onnxcollide.") else None
            if other in STAGES and STAGES.index(other) > STAGES.index(stage):
                wrong.append(f"{path.name}:{line} ({stage}) imports {name} ({other})")
    return wrong


def find_cycle(modules: dict[str, Path]) -> list[str]:
    """One circle of imports among ``modules`` (lazy imports included), or []."""
    edges = {m: sorted({n for n, _ in _imports(p) if n in modules and n != m})
             for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> list[str]:
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                return [*trail[trail.index(nxt):], node, nxt] if nxt in trail else [node, nxt]
            if nxt not in state:
                found = visit(nxt, [*trail, node])
                if found:
                    return found
        state[node] = 2
        return []

    for start in sorted(edges):
        if start not in state:
            found = visit(start, [])
            if found:
                return found
    return []


MODULES = _modules()


def test_every_module_belongs_to_a_known_stage():
    """A new folder is added to STAGES here on purpose, in its place in the data flow."""
    unknown = {m for m in MODULES if _stage(m) is not None and _stage(m) not in STAGES}
    assert unknown == set()


def test_no_module_imports_from_a_stage_above_its_own():
    """Data flows one way: graph -> linalg -> audit -> collide -> runtime -> policy -> compare
    -> report -> cli (errors and _version below them all)."""
    assert stage_violations(MODULES) == []


def test_the_import_graph_has_no_cycle():
    """No circle through any import, lazy ones included (they hid two: cli <-> cli_collide
    <-> entry and search <-> search_operator)."""
    assert find_cycle(MODULES) == []


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    """Both checks can fail: on made-up modules, graph importing cli is reported, and so is a
    circle through a lazy import."""
    files = {"onnxcollide.graph.a": "def f():\n    from onnxcollide.cli.b import g\n",
             "onnxcollide.cli.b": "from onnxcollide.graph.a import f\n"}
    fake = {}
    for name, text in files.items():
        fake[name] = tmp_path / f"{name}.py"
        fake[name].write_text(text)
    assert stage_violations(fake) == ["onnxcollide.graph.a.py:2 (graph) imports "
                                      "onnxcollide.cli.b (cli)",
                                      "onnxcollide.graph.a.py:2 (graph) imports "
                                      "onnxcollide.cli.b.g (cli)"]
    assert find_cycle(fake) == ["onnxcollide.cli.b", "onnxcollide.graph.a", "onnxcollide.cli.b"]


@pytest.mark.parametrize(("library", "allowed"), [("onnx", ONNX_ALLOWED),
                                                   ("onnxruntime", ORT_ALLOWED)])
def test_onnx_and_onnxruntime_are_imported_only_where_allowed(library, allowed):
    """onnx only in graph/ and runtime/ (which builds the graphs it runs), onnxruntime only in
    runtime/."""
    wrong = []
    for module, path in MODULES.items():
        for name, line in _imports(path):
            if name.split(".")[0] == library and _stage(module) not in allowed:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
    assert wrong == []


def test_audit_runs_without_onnxruntime_installed(tmp_path):
    """`audit` needs no ONNX Runtime; `collide` and `validate` without one installed exit 2
    with one line naming the extras to install (onnxruntime made unimportable)."""
    model = str(Path(__file__).resolve().parent.parent / "models" / "mlp_dense.onnx")
    block = ("import sys; sys.modules['onnxruntime'] = None; "
             "from onnxcollide.cli.main import main; main()")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", block, *args], capture_output=True,
                              text=True, timeout=120, check=False)

    audited = run("audit", model, "-f", "json")
    assert audited.returncode == 0, audited.stderr
    assert '"nullity_w1": 192' in audited.stdout.replace(" ", "").replace('":', '": ')
    for args in (["collide", model, "-o", str(tmp_path / "c")],
                 ["validate", model, model, model],
                 ["audit", model, "--validate"]):
        done = run(*args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "ONNX Runtime is not installed" in lines[0]
        assert "onnxcollide[cpu]" in lines[0] and "onnxcollide[gpu]" in lines[0]
    assert not (tmp_path / "c").exists()


def test_no_extra_installs_both_onnxruntime_packages():
    """onnxruntime and onnxruntime-gpu ship the same module and cannot coexist (onnxruntime
    issue #26996): the base needs neither, [cpu] pulls one and [gpu] the other."""
    requires = importlib.metadata.requires("onnxcollide") or []
    by_extra: dict[str | None, set[str]] = {}
    for text in requires:
        name = re.split(r"[ ;<>=!~\[]", text, maxsplit=1)[0].lower().replace("_", "-")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", text)
        by_extra.setdefault(extra.group(1) if extra else None, set()).add(name)
    runtimes = {"onnxruntime", "onnxruntime-gpu"}
    assert by_extra[None] & runtimes == set(), "the base install must not pull a runtime"
    assert by_extra["cpu"] & runtimes == {"onnxruntime"}
    assert by_extra["gpu"] & runtimes == {"onnxruntime-gpu"}
    for extra, names in by_extra.items():
        assert not runtimes <= names, f"extra [{extra}] installs both runtimes"


def test_the_public_api_is_importable_from_the_root():
    """Every name of onnxcollide.__all__ loads, from its stage, on first use."""
    import onnxcollide

    for name in onnxcollide.__all__:
        assert getattr(onnxcollide, name) is not None, name
    assert set(onnxcollide.__all__) == {"__version__", *onnxcollide._PUBLIC}
    with pytest.raises(AttributeError):
        onnxcollide.no_such_name  # noqa: B018


def test_importing_the_package_loads_no_stage():
    """`import onnxcollide` stays cheap (the console script catches Ctrl-C while the stages
    load): it imports none of numpy, onnx or onnxruntime by itself."""
    code = ("import sys, onnxcollide; "
            "print(sorted(m for m in ('numpy', 'onnx', 'onnxruntime') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_module_loads_in_isolation():
    """Each module imports on its own in a fresh interpreter (no hidden order dependency):
    checked for the first module of each stage."""
    firsts = {}
    for module in MODULES:
        stage = _stage(module)
        if stage is not None and stage not in firsts and module != f"onnxcollide.{stage}":
            firsts[stage] = module
    code = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
    for module in firsts.values():
        subprocess.run([sys.executable, "-c", code, module], check=True, timeout=60)
    assert importlib.import_module("onnxcollide.cli.main").main is not None
