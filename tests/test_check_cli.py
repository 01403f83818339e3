"""`onnxcollide check`: exit codes 0/1/2/3, the summary, many models (order, processes, the
cache), baselines, and the JSON / SARIF / JUnit reports checked against their schemas and a
JUnit reader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from builders import MLP, MODELS, PATCH, assert_one_line_error, run_cli
from check_helpers import mlp, run_check, sarif_errors, validator

from onnxcollide.cli.check_run import AuditJob, RunStats, plan_jobs, run_job, run_models
from onnxcollide.report.cache import entry_path

OVERLAP = str(MODELS / "cnn_overlap.onnx")


@pytest.fixture
def folder(tmp_path):
    """A folder with a model that fails the default policy (mlp_dense: dense W1 with nullity
    192), one that passes (cnn_overlap) and a small retrainable MLP."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(MLP, models / "mlp_dense.onnx")
    shutil.copy(OVERLAP, models / "cnn_overlap.onnx")
    return models


def test_a_passing_model_exits_0_and_a_failing_one_1(folder, tmp_path):
    """One line per finding (model, severity, rule, node, numbers and bound), the policy in
    effect, and the verdict."""
    passed = run_check(str(folder / "cnn_overlap.onnx"), "--no-cache")
    assert passed.exit_code == 0, passed.stderr
    assert passed.stdout.splitlines()[-1].startswith("check passed: 1 model(s), 0 error(s)")
    assert "policy: default; rules: w1-collision error [default]" in passed.stdout
    failed = run_check(str(folder), "--no-cache")
    assert failed.exit_code == 1
    lines = failed.stdout.splitlines()
    assert lines[0] == (f"{folder / 'mlp_dense.onnx'}: error w1-collision at node_linear: "
                        "exact collisions of the whole input: W1 is dense with nullity(W1) 192 "
                        "> 0: 192 direction(s) of its input give the same features")
    assert lines[-1] == ("check failed: 2 model(s), 1 error(s), 0 warning(s), 0 allowed, "
                         "0 unreadable")


def test_fail_on_and_policy_files_change_the_verdict(folder, tmp_path, monkeypatch):
    """--fail-on adds an error rule; an onnxcollide.toml in the current folder is found and
    recorded as the source; an allow entry's reason is shown and the model passes."""
    model = str(folder / "cnn_overlap.onnx")
    done = run_check(model, "--no-cache", "--fail-on", "nullity_w1>58")
    assert done.exit_code == 1
    assert f"{model}: error nullity_w1 at node_conv2d: nullity_w1 59 > 58" in done.stdout
    assert "nullity_w1 > 58 error [--fail-on nullity_w1>58]" in done.stdout
    monkeypatch.chdir(tmp_path)
    (tmp_path / "onnxcollide.toml").write_text(
        '[rules]\nnullity_w1 = { severity = "error", max = 10 }\n'
        '[[allow]]\nmodel = "cnn_*.onnx"\nreason = "reviewed in SEC-1"\n')
    allowed = run_check(model, "--no-cache")
    assert allowed.exit_code == 0, allowed.stdout
    assert "allowed nullity_w1 at node_conv2d: nullity_w1 59 > 10 (allowed: reviewed in SEC-1)" \
        in allowed.stdout
    assert "policy: onnxcollide.toml;" in allowed.stdout


def test_unreadable_models_are_findings_and_the_others_are_checked(folder, tmp_path):
    """--keep-going (the default): a broken file is a finding and an error line, the others
    are checked; exit 3 when no error rule failed, 1 when one did. --fail-fast stops with
    the one error line."""
    (folder / "broken.onnx").write_bytes(b"not onnx")
    (folder / "mlp_dense.onnx").unlink()
    done = run_check(str(folder), "--no-cache")
    assert done.exit_code == 3
    assert f"{folder / 'broken.onnx'}: error unreadable: " in done.stdout
    assert "error: " in done.stderr and "not a valid ONNX file" in done.stderr
    assert "check incomplete: 2 model(s), 0 error(s)" in done.stdout
    assert "2 model(s): 1 audited and 1 unreadable, in " in done.stderr
    shutil.copy(MLP, folder / "mlp_dense.onnx")
    assert run_check(str(folder), "--no-cache").exit_code == 1
    stopped = run_check(str(folder / "broken.onnx"), OVERLAP, "--no-cache", "--fail-fast")
    assert_one_line_error(stopped, 3)


@pytest.mark.parametrize(("args", "words"), [
    (["EMPTY"], "the folder holds no .onnx file"),
    (["EMPTY/*.onnx"], "the pattern matches no .onnx file"),
    ([MLP, "--policy", "missing.toml"], "the policy file does not exist"),
    ([MLP, "--fail-on", "nope>1"], "names no rule"),
    ([MLP, "--no-cache", "--cache-dir", "x"], "--cache-dir does not apply with --no-cache"),
    ([MLP, "--update-baseline"], "--update-baseline needs --baseline"),
    ([MLP, "--baseline-dir", "nowhere"], "--baseline-dir nowhere: the folder does not exist"),
    ([MLP, "--baseline", "missing.json"], "the baseline does not exist"),
    ([MLP, "--sarif", "no/such/folder/r.sarif"], "does not exist"),
    ([MLP, "--sarif", "r.out", "--junit", "r.out"], "names the same file as --sarif"),
    ([MLP, "--sarif", MLP], "the report would replace it"),
    ([MLP, "--jobs", "0"], "0 is not in the range x>=1"),
    ([MLP, "--max-memory", "lots"], "--max-memory 'lots' is not a size"),
    ([MLP, "--no-cache", "--policy", ""], "--policy '': needs a file name"),
    ([MLP, "--cache-dir", ""], "--cache-dir '': needs a folder name"),
    ([MLP, "--no-cache", "--baseline", ""], "--baseline '': needs a file name"),
    ([MLP, "--no-cache", "--baseline", "mlp_dense.onnx="], "--baseline mlp_dense.onnx=: needs"),
    ([MLP, "--no-cache", "--baseline", "", "--update-baseline"], "--baseline '': needs a file"),
    ([MLP, "--no-cache", "--baseline-dir", ""], "--baseline-dir '': needs a folder name"),
    ([MLP, "--no-cache", "--baseline-dir", MLP], f"--baseline-dir {MLP}: is a file, not a folder"),
    ([MLP, "--no-cache", "--baseline-dir", MLP, "--update-baseline"], "is a file, not a folder"),
    ([MLP, "--no-cache", "--baseline", "EMPTY"], "EMPTY: is a folder, not a baseline file"),
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EMPTY").mkdir()
    line = assert_one_line_error(run_check(*args), 2)
    assert words in line, line


def test_a_baseline_of_another_model_or_settings_is_refused(folder, tmp_path):
    base = tmp_path / "patch.json"
    done = run_check(PATCH, "--no-cache", "-f", "json", "-o", str(base))
    assert done.exit_code == 1
    other = run_check(MLP, "--no-cache", "--baseline", f"{MLP}={base}")
    assert "it is a baseline of another model" in assert_one_line_error(other, 2)
    unmatched = run_check(MLP, "--no-cache", "--baseline", str(base))
    assert "a baseline of patch_embed.onnx, none of the models checked" in \
        assert_one_line_error(unmatched, 2)
    (tmp_path / "paper.toml").write_text('[settings]\nconv-convention = "paper"\n')
    settings = run_check(PATCH, "--no-cache", "--baseline", str(base), "--policy",
                         str(tmp_path / "paper.toml"))
    assert "key 'settings.conv_convention'" in assert_one_line_error(settings, 2)


def test_update_baseline_then_a_retrained_model_is_caught(tmp_path, monkeypatch):
    """--baseline-dir with --update-baseline writes one audit report per model; after the
    weights change so that fc2 loses rank, check exits 1 and says which layer and how; the
    unchanged model passes against its own baseline."""
    monkeypatch.chdir(tmp_path)
    Path("m").mkdir()
    mlp(Path("m/net.onnx"), 8, 4)
    written = run_check("m", "--no-cache", "--baseline-dir", "base", "--update-baseline")
    assert written.exit_code == 0, written.stdout
    assert Path("base/m/net.onnx.json").is_file()
    validator("audit-report-v1.schema.json").validate(
        json.loads(Path("base/m/net.onnx.json").read_text()))
    assert run_check("m", "--no-cache", "--baseline-dir", "base").exit_code == 0
    mlp(Path("m/net.onnx"), 8, 3, seed=11)  # retrained: fc2 rank 4 -> 3
    caught = run_check("m", "--no-cache", "--baseline-dir", "base")
    assert caught.exit_code == 1
    assert ("m/net.onnx: error baseline-rank at fc2: rank 4 -> 3, nullity 4 -> 5 (q 8 -> 8; "
            "matched by weight identity to fc2 (weight fc2.weight) in base/m/net.onnx.json, "
            "models[0])") in caught.stdout
    other = run_check("m", "--no-cache", "--baseline", "base/m/net.onnx.json")
    assert other.exit_code == 1  # matched by file name
    missing = run_check("m", MLP, "--no-cache", "--baseline-dir", "base")
    assert f"{MLP}: warning baseline-missing: no baseline for this model" in missing.stdout


def test_order_is_stable_and_json_identical_across_jobs_and_the_cache(tmp_path, folder):
    """Results follow the order given whatever the scheduling; one process, two processes
    and a warm cache give byte-identical JSON; the warm run audits nothing."""
    order = [str(folder / "mlp_dense.onnx"), str(folder / "cnn_overlap.onnx"), PATCH]
    cache = str(tmp_path / "cache")
    outs = []
    for extra in (["--no-cache", "-j", "1"], ["--cache-dir", cache, "-j", "2"],
                  ["--cache-dir", cache, "-j", "2"]):
        out = tmp_path / f"r{len(outs)}.json"
        done = run_check(*order, *extra, "-f", "json", "-o", str(out))
        assert done.exit_code == 1, done.stderr
        outs.append(out.read_bytes())
        last_stderr = done.stderr
    assert outs[0] == outs[1] == outs[2]
    assert "0 audited; 3 from the cache" in last_stderr
    report = json.loads(outs[0])
    assert [m["path"] for m in report["models"]] == order
    validator("check-report-v1.schema.json").validate(report)
    assert report["summary"] == {"models": 3, "errors": 2, "warnings": 0, "allowed": 0,
                                 "unreadable": 0, "exit_code": 1}


def test_a_corrupt_cache_entry_is_ignored_and_rewritten(tmp_path):
    """A truncated entry, or one whose numbers were edited (valid JSON), is not trusted: the
    model is audited again, the entry rewritten, and the result is the true one."""
    cache = str(tmp_path / "cache")
    job = AuditJob(MLP)
    first = run_models([job], 1, cache, True, RunStats())
    files = [p for p in Path(cache).rglob("*.json")]
    assert len(files) == 1
    entry = json.loads(files[0].read_text())
    entry["payload"]["record"]["metrics"]["nullity_w1"] = 0
    files[0].write_text(json.dumps(entry))
    stats = RunStats()
    again = run_models([job], 1, cache, True, stats)
    assert stats.audited == 1 and stats.cached == 0 and stats.rewritten == [MLP]
    assert again[0].record == first[0].record
    files[0].write_text(files[0].read_text()[:100])
    assert run_models([job], 1, cache, True, RunStats())[0].record == first[0].record
    stats = RunStats()
    run_models([job], 1, cache, True, stats)
    assert stats.cached == 1
    assert Path(entry_path(cache, entry["key"])) == files[0]


def _dies_on_patch(job: AuditJob) -> dict:
    """A worker that dies (as out of memory would) on patch_embed."""
    if job.path.endswith("patch_embed.onnx"):
        os._exit(9)
    return run_job(job)


def test_a_worker_that_dies_costs_only_its_own_model():
    """Two processes; the one auditing patch_embed dies: the other models keep their results
    and patch_embed is reported as unreadable with what to do."""
    jobs = [AuditJob(MLP), AuditJob(PATCH), AuditJob(OVERLAP)]
    runs = run_models(jobs, 2, None, True, RunStats(), worker=_dies_on_patch)
    assert [r.path for r in runs] == [MLP, PATCH, OVERLAP]
    assert runs[0].record is not None and runs[2].record is not None
    assert runs[1].record is None and "ended abruptly" in (runs[1].error or "")


def test_jobs_are_capped_by_memory_for_the_largest_model():
    gib = 2**30
    assert plan_jobs(None, 10, 0, 8, None)[0] == 8
    assert plan_jobs(None, 3, 0, 8, None) == (3, "one per core (8), no more than the 3 "
                                                 "model(s) to audit")
    jobs, why = plan_jobs(None, 10, 2 * gib, 8, 20 * gib)
    assert jobs == 3 and "capped to 3 by memory" in why
    assert plan_jobs(4, 10, 100 * gib, 8, 20 * gib)[0] == 1


def test_reports_validate_sarif_schema_and_junit_reader(folder, tmp_path, monkeypatch):
    """SARIF validates against the official 2.1.0 schema, one rule per enabled rule with
    help text, one result per finding with its level, the model as artifact and the node as
    logical location; an allowed finding is a suppression. JUnit: one test case per (model,
    rule), a failure with the finding's text, skipped for an allowed one."""
    from junitparser import Error, Failure, JUnitXml, Skipped

    (folder / "broken.onnx").write_bytes(b"")
    policy = tmp_path / "p.toml"
    policy.write_text('[[allow]]\nmodel = "*cnn_overlap.onnx"\nreason = "known"\n'
                      '[rules]\nnullity_w1 = { severity = "warning", max = 10 }\n')
    sarif, junit = tmp_path / "r.sarif", tmp_path / "r.xml"
    monkeypatch.chdir(tmp_path)  # artifact URIs are relative to the folder the check runs in
    done = run_check(str(folder), "--no-cache", "--policy", str(policy), "--sarif", str(sarif),
                     "--junit", str(junit))
    assert done.exit_code == 1, done.stdout
    log = json.loads(sarif.read_text())
    assert sarif_errors(log) == []
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert "w1-collision" in [r["id"] for r in rules]
    assert all(r["help"]["text"] and r["fullDescription"]["text"] for r in rules)
    results = {(r["ruleId"], r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]):
               r for r in run["results"]}
    dense = results[("w1-collision", "models/mlp_dense.onnx")]
    assert dense["level"] == "error"
    assert dense["locations"][0]["logicalLocations"][0]["name"] == "node_linear"
    assert dense["locations"][0]["physicalLocation"]["artifactLocation"]["uriBaseId"] == \
        "%SRCROOT%"
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == tmp_path.as_uri() + "/"
    allowed = results[("nullity_w1", "models/cnn_overlap.onnx")]
    assert allowed["suppressions"][0]["justification"] == "known"
    assert run["properties"]["policy"]["source"] == "p.toml"  # relative to the run folder
    xml = JUnitXml.fromfile(str(junit))
    cases = {(s.name.rsplit("/", 1)[-1], c.name): c for s in xml for c in s}
    assert isinstance(cases[("mlp_dense.onnx", "w1-collision")].result[0], Failure)
    assert "dense with nullity(W1) 192" in cases[("mlp_dense.onnx", "w1-collision")].result[0].text
    assert isinstance(cases[("cnn_overlap.onnx", "nullity_w1")].result[0], Skipped)
    assert cases[("cnn_overlap.onnx", "w1-collision")].result == []  # passed
    assert isinstance(cases[("broken.onnx", "unreadable")].result[0], Error)


def test_a_failed_run_leaves_earlier_reports_whole(folder, tmp_path):
    """A usage error found after the audits (another model's baseline) leaves the report
    files as they were."""
    out = tmp_path / "r.json"
    out.write_text("earlier report\n")
    base = tmp_path / "b.json"
    run_check(PATCH, "--no-cache", "-f", "json", "-o", str(base))
    done = run_check(str(folder / "mlp_dense.onnx"), "--no-cache", "-o", str(out),
                     "--baseline", f"mlp_dense.onnx={base}")
    assert_one_line_error(done, 2)
    assert out.read_text() == "earlier report\n"
    assert not list(tmp_path.glob(".onnxcollide-*"))


def test_w1_validated_carries_the_residuals():
    """The rule runs audit --validate's check: on mlp_dense the collision passes in ONNX
    Runtime and the finding gives the W1 residual against a random perturbation's."""
    done = run_check(MLP, "--no-cache", "--fail-on", "w1-validated", "-f", "json")
    report = json.loads(done.stdout)
    finding = next(f for f in report["findings"] if f["rule"] == "w1-validated")
    assert finding["details"]["w1_residual"] < 1e-4 < finding["details"]["random_w1_residual"]
    assert "passed validation in ONNX Runtime: W1 residual" in finding["message"]
    assert report["models"][0]["audit"]["validation"]["verdict"].startswith("PASS")
    assert report["tool"]["onnxruntime"]


def test_init_policy_writes_a_policy_check_then_finds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("init-policy").exit_code == 0
    assert "[rules]" in Path("onnxcollide.toml").read_text()
    assert "exists already" in assert_one_line_error(run_cli("init-policy"), 2)
    assert run_cli("init-policy", "--force").exit_code == 0
    done = run_check(OVERLAP, "--no-cache")
    assert "policy: onnxcollide.toml; rules: w1-collision error [onnxcollide.toml]" in \
        done.stdout


def test_a_warm_run_imports_neither_numpy_nor_onnx(tmp_path):
    """Every model from the cache: the check starts no audit library (that is what makes a
    re-run near-instant)."""
    cache = str(tmp_path / "cache")
    assert run_check(MLP, OVERLAP, "--cache-dir", cache).exit_code == 1
    code = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('LOADED=%s' % "
            "sorted(m for m in ('numpy', 'onnx', 'scipy') if m in sys.modules))); "
            "from onnxcollide.cli.main import main; main()")
    done = subprocess.run([sys.executable, "-c", code, "check", MLP, OVERLAP, "--cache-dir",
                           cache], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert "LOADED=[]" in done.stderr and "2 from the cache" in done.stderr


def test_check_needs_onnx_runtime_only_for_w1_validated(tmp_path):
    """Without ONNX Runtime (made unimportable): check runs; with w1-validated on, it is a
    usage error naming the extras, before any audit."""
    block = ("import sys; sys.modules['onnxruntime'] = None; "
             "from onnxcollide.cli.main import main; main()")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", block, "check", MLP, "--no-cache", *args],
                              capture_output=True, text=True, timeout=120, check=False)

    assert run().returncode == 1
    refused = run("--fail-on", "w1-validated")
    assert refused.returncode == 2 and refused.stdout == ""
    [line] = refused.stderr.strip().splitlines()
    assert "ONNX Runtime is not installed" in line and "onnxcollide[cpu]" in line


def test_input_shapes_and_settings_key_the_cache():
    """Two runs that differ in an input shape or the tolerance never share an entry."""
    base = AuditJob(MLP)
    assert base.settings() != AuditJob(MLP, input_shapes=(("x", (2, 256)),)).settings()
    assert base.settings() != AuditJob(MLP, rtol=1e-5).settings()
    assert base.settings() != AuditJob(MLP, validate=True).settings()


def test_max_memory_refuses_a_model_as_unreadable_and_goes_on(tmp_path):
    """--max-memory (as for audit) is in force in the audits check runs: a model whose weight
    would not fit is an unreadable finding (exit 3), the other model is checked."""
    done = run_check(MLP, OVERLAP, "--no-cache", "--max-memory", "1K", "--jobs", "1")
    assert done.exit_code in (1, 3), done.stdout
    assert "unreadable" in done.stdout and "1K" in done.stdout


def test_update_baseline_into_one_file_then_check_against_it(folder, tmp_path, monkeypatch):
    """--update-baseline --baseline FILE writes one audit report of every model read; checked
    against it, the unchanged models have no baseline finding (only the policy's others)."""
    monkeypatch.chdir(tmp_path)
    written = run_check("models", "--no-cache", "--baseline", "base.json", "--update-baseline")
    assert written.exit_code == 1  # mlp_dense's w1-collision is still checked
    report = json.loads(Path("base.json").read_text())
    validator("audit-report-v1.schema.json").validate(report)
    assert sorted(m["path"] for m in report["models"]) == ["models/cnn_overlap.onnx",
                                                           "models/mlp_dense.onnx"]
    again = run_check("models", "--no-cache", "--baseline", "base.json", "-f", "json")
    findings = json.loads(again.stdout)["findings"]
    assert [f["rule"] for f in findings] == ["w1-collision"]
    assert all(m["baseline"]["new"] == [] and m["baseline"]["removed"] == []
               for m in json.loads(again.stdout)["models"])


@pytest.mark.parametrize(("name", "args", "start"), [
    ("r.json", (), "{"), ("r.txt", (), MLP), ("r", (), MLP), ("r.log", ("-f", "json"), "{")])
def test_the_report_format_follows_the_output_suffix(tmp_path, name, args, start):
    """-o r.json without -f wrote the text summary into the .json file (audit and compare
    already took the format from the suffix); -f still wins over a suffix naming none."""
    out = tmp_path / name
    done = run_check(MLP, "--no-cache", "-o", str(out), *args)
    assert done.exit_code == 1, done.stderr  # mlp_dense fails the default gate
    assert out.read_text("utf-8").startswith(start)
    if start == "{":
        validator("check-report-v1.schema.json").validate(json.loads(out.read_text("utf-8")))


@pytest.mark.parametrize(("name", "args", "match"), [
    ("r.gz", (), "--output {out}: cannot tell the report format from the suffix '.gz'. "
                 "Give -f text or json, or name a .txt or .json file"),
    ("r.json", ("-f", "text"), "--output {out}: -f text but the file name says json"),
])
def test_an_output_suffix_naming_no_format_or_another_is_a_usage_error(tmp_path, name, args,
                                                                        match):
    out = tmp_path / name
    line = assert_one_line_error(run_check(MLP, "--no-cache", "-o", str(out), *args), 2)
    assert match.replace("{out}", str(out)) in line
    assert os.listdir(tmp_path) == []


def _external_model(folder: Path) -> tuple[Path, Path]:
    """A MatMul model whose weight lies in ``w.bin``: (the model, its data file)."""
    import numpy as np
    import onnx
    from builders import build_model, init, value
    from onnx import helper

    model = build_model([helper.make_node("MatMul", ["x", "W"], ["y"])], [value("x", [1, 4])],
                        [value("y", [1, 3])], [init("W", np.ones((4, 3), np.float32))])
    path = folder / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    return path, folder / "w.bin"


def test_update_baseline_never_replaces_a_model_or_another_file(tmp_path, monkeypatch):
    """--update-baseline --baseline m.onnx replaced the model with audit JSON (exit 0): a
    baseline naming a checked model (through --baseline, MODEL=FILE or a link in
    --baseline-dir), its external data, or another option's file is a usage error, and
    nothing is written."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(MLP, "m.onnx")
    model, data = _external_model(tmp_path)
    Path("base").mkdir()
    (Path("base") / "m.onnx.json").symlink_to(tmp_path / "m.onnx")
    files = {p: p.read_bytes() for p in (Path("m.onnx"), model, data)}
    for args, words in [
            (["--baseline", "m.onnx"], "--baseline m.onnx: is the model 'm.onnx': the baseline "
                                       "would replace it"),
            (["--baseline", "m.onnx=m.onnx"], "the baseline would replace it"),
            (["--baseline-dir", "base"], "--baseline-dir base, base/m.onnx.json (the baseline "
                                         "of m.onnx): is the model 'm.onnx'"),
            (["--baseline", "w.bin"], f"is an external data file of the model '{model}'"),
            (["--baseline", "r.json", "-o", "r.json"], "names the same file as --output"),
            (["--baseline", "m.onnx=b.json", "--baseline", f"{model}=b.json"],
             "names the same file as --baseline m.onnx=b.json")]:
        done = run_check("m.onnx", str(model), "--no-cache", "--update-baseline", *args)
        assert words in assert_one_line_error(done, 2)
    assert {p: p.read_bytes() for p in files} == files
    assert sorted(os.listdir(tmp_path)) == ["base", "ext.onnx", "m.onnx", "w.bin"]
    assert os.listdir("base") == ["m.onnx.json"]


def test_a_baseline_with_impossible_numbers_is_a_usage_error(tmp_path, monkeypatch):
    """A baseline with a negative nullity was read, and the finding said 'nullity -5 -> 192'."""
    monkeypatch.chdir(tmp_path)
    assert run_check(MLP, "--no-cache", "-f", "json", "-o", "b.json").exit_code == 1
    report = json.loads(Path("b.json").read_text())
    report["models"][0]["audit"]["layers"][0]["nullity"] = -5
    Path("b.json").write_text(json.dumps(report))
    line = assert_one_line_error(run_check(MLP, "--no-cache", "--baseline", "b.json"), 2)
    assert "b.json, models[0].audit, key 'layers[0].nullity': is -5" in line


def test_update_baseline_dir_refuses_two_models_with_one_baseline_file(tmp_path, monkeypatch):
    """Models outside the current folder keep their file name in --baseline-dir: two of one
    name wrote one file, the second replacing the first; a usage error now, nothing written."""
    for name in ("a", "b", "run"):
        (tmp_path / name).mkdir()
        if name != "run":
            shutil.copy(MLP, tmp_path / name / "m.onnx")
    monkeypatch.chdir(tmp_path / "run")
    done = run_check(str(tmp_path / "a" / "m.onnx"), str(tmp_path / "b" / "m.onnx"),
                     "--no-cache", "--update-baseline", "--baseline-dir", "base")
    line = assert_one_line_error(done, 2)
    assert f"base/m.onnx.json (the baseline of {tmp_path / 'b' / 'm.onnx'}): names the same " \
        f"file as --baseline-dir base, base/m.onnx.json (the baseline of " \
        f"{tmp_path / 'a' / 'm.onnx'})" in line
    assert os.listdir(".") == []


@pytest.mark.parametrize(("text", "words"), [
    ("[" * 5000 + "]" * 5000, "is not valid JSON: nested too deep"),
    ('{"a": ' * 5000 + "1" + "}" * 5000, "is not valid JSON: nested too deep"),
    ("1" * 5000, "is not valid JSON: a number too large"),
])
def test_a_baseline_nested_too_deep_or_with_a_huge_number_is_a_usage_error(tmp_path, text,
                                                                            words):
    """These were internal errors (RecursionError, Python's integer digit limit)."""
    base = tmp_path / "b.json"
    base.write_text(text)
    line = assert_one_line_error(run_check(MLP, "--no-cache", "--baseline", str(base)), 2)
    assert f"{base}: the baseline {words}" in line


def test_finding_lines_of_a_path_with_a_newline_are_one_line(tmp_path):
    """The summary's finding line held the path's raw newline (the error line on stderr
    did not); JSON keeps the path as it is."""
    (tmp_path / "bad\nname.onnx").write_bytes(b"x")
    done = run_check(str(tmp_path), "--no-cache")
    assert done.exit_code == 3
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"{tmp_path}/bad name.onnx: error unreadable")
    report = json.loads(run_check(str(tmp_path), "--no-cache", "-f", "json").stdout)
    assert report["models"][0]["path"] == str(tmp_path / "bad\nname.onnx")


def test_a_report_path_ending_in_a_slash_is_refused(tmp_path):
    """-o out/new.json/ wrote a text table into a file named new.json (audit, check and
    compare alike): a path ending in '/' names a folder."""
    out = f"{tmp_path}/new.json/"
    assert "ends in '/'" in assert_one_line_error(run_check(MLP, "--no-cache", "-o", out), 2)
    assert "ends in '/'" in assert_one_line_error(run_cli("audit", MLP, "-o", out), 2)
    assert os.listdir(tmp_path) == []


def test_a_link_to_another_options_file_is_the_same_file(tmp_path):
    """--baseline LINK -o TARGET passed the same-file check (it compared paths, not files):
    the baseline replaced the check report."""
    (tmp_path / "x.json").write_text("{}")
    os.symlink(tmp_path / "x.json", tmp_path / "link.json")
    line = assert_one_line_error(run_check(MLP, "--no-cache", "--update-baseline", "--baseline",
                                           str(tmp_path / "link.json"), "-o",
                                           str(tmp_path / "x.json")), 2)
    assert "names the same file as --output" in line
    assert (tmp_path / "x.json").read_text() == "{}"


def test_a_baseline_folder_that_cannot_be_made_is_refused_before_any_audit(tmp_path,
                                                                           monkeypatch):
    """A file where --baseline-dir needed a sub-folder was found only when the baselines were
    written, after the report (-o) and some baselines: now before any audit."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(MODELS, "models", ignore=shutil.ignore_patterns("pairs"))
    os.makedirs("b/models")
    (tmp_path / "b" / "models" / "sub").write_text("in the way")
    os.makedirs("models/sub")
    shutil.copy(MLP, "models/sub/m.onnx")
    line = assert_one_line_error(run_check("models", "--no-cache", "--update-baseline",
                                           "--baseline-dir", "b", "-o", "r.json"), 2)
    assert "cannot be made: a file is in its way" in line
    assert not os.path.exists("r.json") and os.listdir("b/models") == ["sub"]


def test_a_linked_model_in_a_folder_is_checked_under_its_own_path(tmp_path, monkeypatch):
    """A folder holding a model and a link to it checked the model once, under the link's
    name (sorted first), so its baseline was written under the link's path and not found for
    the model itself."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("models")
    shutil.copy(MLP, "models/mlp_dense.onnx")
    os.symlink("mlp_dense.onnx", "models/alias.onnx")
    done = run_check("models", "--no-cache", "--update-baseline", "--baseline-dir", "b")
    assert done.exit_code == 1, done.stderr
    assert os.listdir("b/models") == ["mlp_dense.onnx.json"]
    again = run_check("models/mlp_dense.onnx", "--no-cache", "--baseline-dir", "b")
    assert "warning baseline-missing" not in again.stdout and again.exit_code == 1


def test_a_policy_or_baseline_pipe_nobody_writes_to_does_not_block(tmp_path):
    """A FIFO given as --policy or --baseline blocked forever; it now reads as empty (an empty
    policy is the default one; an empty baseline is not JSON), and process substitution
    (a pipe with a writer) still works."""
    policy, baseline = tmp_path / "p.toml", tmp_path / "b.json"
    os.mkfifo(policy)
    os.mkfifo(baseline)
    done = subprocess.run([sys.executable, "-m", "onnxcollide", "check", MLP, "--no-cache",
                           "--policy", str(policy)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1 and "p.toml; rules:" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "-m", "onnxcollide", "check", MLP, "--no-cache",
                           "--baseline", str(baseline)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and "the baseline is not JSON" in done.stderr
