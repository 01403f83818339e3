"""The README's CI examples work: the GitHub Actions job's commands (fail on a model breaking
the policy, pass without it, a SARIF file that validates, a JUnit file a reader loads), and
the pre-commit hook through `pre-commit try-repo` in a temporary git repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from builders import MLP, MODELS
from check_helpers import ROOT, sarif_errors


def _job_steps() -> list[dict]:
    """The steps of the README's GitHub Actions job."""
    block = re.search(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text("utf-8"), re.S)
    assert block is not None
    jobs = yaml.safe_load(block.group(1))["jobs"]
    [job] = jobs.values()
    return job["steps"]


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A step's command, with this checkout's onnxcollide in place of the installed one."""
    args = command.split()
    assert args[0] == "onnxcollide"
    return subprocess.run([sys.executable, "-m", "onnxcollide", *args[1:]], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


def test_the_readme_actions_job_fails_on_a_bad_model_and_passes_without(tmp_path):
    """Install names an extra the package has; the check step exits 1 with mlp_dense (dense
    W1 with nullity 192 breaks the default policy) and 0 with cnn_overlap alone; its SARIF
    validates against the SARIF 2.1.0 schema and the upload step reads that file; its JUnit
    file loads in junitparser."""
    from junitparser import JUnitXml

    steps = _job_steps()
    runs = [s["run"] for s in steps if "run" in s]
    assert runs[0] == 'pip install "onnxcollide[cpu]"'
    assert "cpu" in (ROOT / "pyproject.toml").read_text("utf-8")
    check = next(r for r in runs if r.startswith("onnxcollide check"))
    upload = next(s for s in steps if "upload-sarif" in s.get("uses", ""))
    assert upload["if"] == "always()"
    sarif = tmp_path / upload["with"]["sarif_file"]
    (tmp_path / "models").mkdir()
    shutil.copy(MLP, tmp_path / "models")
    shutil.copy(MODELS / "cnn_overlap.onnx", tmp_path / "models")
    failed = _run(check, tmp_path)
    assert failed.returncode == 1, failed.stderr
    assert "models/mlp_dense.onnx: error w1-collision" in failed.stdout
    log = json.loads(sarif.read_text())
    assert sarif_errors(log) == [] and len(log["runs"][0]["results"]) == 1
    junit = JUnitXml.fromfile(str(tmp_path / "onnxcollide.xml"))
    assert junit.failures == 1 and junit.tests >= 2
    (tmp_path / "models" / "mlp_dense.onnx").unlink()
    passed = _run(check, tmp_path)
    assert passed.returncode == 0, passed.stdout
    assert json.loads(sarif.read_text())["runs"][0]["results"] == []


def test_the_pre_commit_hook_definition_runs_its_entry_on_changed_models(tmp_path):
    """What pre-commit does with the hook, without installing it (no network): the hook
    matches .onnx files, and its entry on the changed models fails on mlp_dense (it breaks
    the default policy) and passes on cnn_overlap alone."""
    import yaml

    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "onnxcollide-check")
    assert hook["language"] == "python" and hook["files"] == r"\.onnx$"
    assert hook["entry"] == "onnxcollide check"
    for name in ("mlp_dense.onnx", "cnn_overlap.onnx"):
        shutil.copy(MODELS / name, tmp_path)
    failing = _run(f"{hook['entry']} mlp_dense.onnx cnn_overlap.onnx", tmp_path)
    assert failing.returncode == 1, failing.stdout
    assert "mlp_dense.onnx: error w1-collision" in failing.stdout
    passing = _run(f"{hook['entry']} cnn_overlap.onnx", tmp_path)
    assert passing.returncode == 0, passing.stdout


@pytest.mark.skipif(os.environ.get("ONNXCOLLIDE_NETWORK_TESTS") != "1",
                    reason="pre-commit try-repo installs the hook's environment from the "
                           "package index (network, about 2 minutes): set "
                           "ONNXCOLLIDE_NETWORK_TESTS=1 to run it")
@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_pre_commit_hook_checks_the_changed_models(tmp_path):
    """`pre-commit try-repo` installs the hook from this checkout (pip, from the package
    index) and runs it on the models a commit changes: patch_embed, committed earlier, is not
    checked; of the two staged models, mlp_dense breaks the default policy and fails the hook,
    cnn_overlap is checked and passes."""
    pytest.importorskip("pre_commit")
    from builders import PATCH

    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=repo, check=True, env=env, capture_output=True)

    git("init", "-q")
    shutil.copy(PATCH, repo)
    git("add", ".")
    git("commit", "-q", "-m", "an earlier model")
    shutil.copy(MLP, repo)
    shutil.copy(MODELS / "cnn_overlap.onnx", repo)
    git("add", ".")
    done = subprocess.run([sys.executable, "-m", "pre_commit", "try-repo", str(ROOT),
                           "onnxcollide-check", "--verbose"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "onnxcollide check" in out and "Failed" in out
    assert "mlp_dense.onnx: error w1-collision at node_linear" in out
    assert "cnn_overlap.onnx: error" not in out and "patch_embed" not in out
    assert "check failed: 2 model(s), 1 error(s)" in out
