"""`onnxcollide check`: the pre-deployment gate. Audit each model, evaluate a policy (and
baselines), print one line per finding, write JSON / SARIF / JUnit reports, exit 0 / 1 / 3.

Exit codes: 0 no error rule failed; 1 an error rule failed; 2 usage error (a bad policy,
baseline or option); 3 a model could not be read and no error rule failed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from onnxcollide.cli.check_run import (
    AuditJob,
    ModelRun,
    RunStats,
    collect_models,
    run_models,
    tool_versions,
)
from onnxcollide.cli.options import (
    apply_max_memory,
    max_memory_option,
    refuse_folder_name,
    report_format,
    run_guarded,
    shapes_per_model,
)
from onnxcollide.errors import UsageError
from onnxcollide.policy.baseline import (
    AUDIT_SCHEMA_ID,
    Baseline,
    assign_baselines,
    baseline_path,
    check_settings,
    split_spec,
)
from onnxcollide.policy.config import Policy, load_policy
from onnxcollide.policy.evaluate import CheckResult, evaluate
from onnxcollide.policy.facts import ModelFacts, facts_of_record
from onnxcollide.report.cache import default_cache_dir
from onnxcollide.report.check_format import (
    multi_model_report,
    render_json,
    report_dict,
    single_model_report,
    summary_text,
)
from onnxcollide.report.files import write_stdout, write_text
from onnxcollide.report.junit_format import render_junit
from onnxcollide.report.sarif_format import render_sarif

REPORT_SUFFIXES = {".txt": "text", ".json": "json", "": "text"}  # -o suffix -> format


@click.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL_OR_FOLDER...")
@click.option("--policy", "policy_file", metavar="FILE",
              help="Policy TOML [default: [tool.onnxcollide] of the nearest pyproject.toml, "
                   "else the nearest onnxcollide.toml, else the built-in default].")
@click.option("--fail-on", multiple=True, metavar="RULE[>BOUND]",
              help="Add a rule at severity error, e.g. 'nullity_w1>0' (quoted: > is the "
                   "shell's), w1-validated, "
                   "'layer-nullity:*fc*>0' (repeatable).")
@click.option("--baseline", "baselines", multiple=True, metavar="[MODEL=]FILE",
              help="An earlier 'audit -f json' or 'check -f json' report; its models are "
                   "matched by file name, or to MODEL (repeatable).")
@click.option("--baseline-dir", metavar="DIR",
              help="Baselines of many models: DIR/<model path>.json.")
@click.option("--update-baseline", is_flag=True,
              help="Write the baselines (--baseline FILE or --baseline-dir) from this run "
                   "instead of checking against them.")
@click.option("--jobs", "-j", type=click.IntRange(min=1),
              help="Audit in this many processes [default: one per core, capped by memory "
                   "for the largest model].")
@click.option("--keep-going/--fail-fast", default=True, show_default=True,
              help="Report an unreadable model as a finding and check the others, or stop "
                   "at the first.")
@click.option("--cache-dir", metavar="DIR",
              help="Cache of audit results [default: the user cache folder].")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the cache.")
@click.option("--format", "-f", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="The report on standard output (or in --output) [default: from the "
                   "--output suffix (.json, .txt), else text].")
@click.option("--output", "-o", metavar="FILE",
              help="Write the report there (the summary still goes to standard output).")
@click.option("--sarif", metavar="FILE", help="Also write SARIF 2.1.0 (GitHub code scanning).")
@click.option("--junit", metavar="FILE", help="Also write JUnit XML (CI test reports).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="[MODEL:]NAME=DIMS",
              help="Fix an input's shape, as for audit (repeatable).")
@max_memory_option
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.pass_context
def check(ctx: click.Context, models: tuple[str, ...], policy_file: str | None,
          fail_on: tuple[str, ...], baselines: tuple[str, ...], baseline_dir: str | None,
          update_baseline: bool, jobs: int | None, keep_going: bool, cache_dir: str | None,
          no_cache: bool, fmt: str, output: str | None, sarif: str | None, junit: str | None,
          input_shapes: tuple[str, ...], max_memory: str | None, debug: bool) -> None:
    """Check models against a policy: exit 1 when an error rule fails (the CI gate)."""

    def run() -> None:
        apply_max_memory(max_memory)  # a bad size is a usage error before any work
        form = report_format(ctx, fmt, output, REPORT_SUFFIXES, "text")
        _refuse_empty({"--policy": policy_file, "--cache-dir": cache_dir,
                       "--baseline-dir": baseline_dir})
        if no_cache and cache_dir is not None:
            raise UsageError("--cache-dir does not apply with --no-cache",
                             hint="drop one of them")
        paths = collect_models(models)
        policy = load_policy(policy_file, fail_on)
        outputs = _check_outputs({"--output": output, "--sarif": sarif, "--junit": junit},
                                 paths)
        given, chosen = _baselines(paths, policy, baselines, baseline_dir, update_baseline)
        written = _baseline_files(paths, baselines, baseline_dir, outputs) \
            if update_baseline else {}
        validate = policy.is_on("w1-validated")
        if validate:
            from onnxcollide.runtime.session import resolve_device

            resolve_device(policy.settings.device)
        shapes = shapes_per_model(input_shapes, tuple(paths))
        folder = None if no_cache else (cache_dir or default_cache_dir())
        stats = RunStats()
        runs = run_models([_job(p, policy, shapes[p], validate, max_memory) for p in paths],
                          jobs, folder, keep_going, stats)
        result = evaluate(policy, [_facts(r) for r in runs], chosen, given)
        report = report_dict(result, {r.path: r.record for r in runs if r.record},
                             _settings(runs, policy), tool_versions(validate))
        _refuse_external_data({**{f"{o} {p}": p for o, p in outputs.items()}, **written},
                              runs)
        _write_reports(result, report, form, outputs, update_baseline, baselines, baseline_dir)
        _tell(runs, stats, folder)
        sys.exit(result.exit_code)

    run_guarded(run, debug)


def _job(path: str, policy: Policy, shapes: tuple[tuple[str, tuple[int, ...]], ...],
         validate: bool, max_memory: str | None) -> AuditJob:
    s = policy.settings
    return AuditJob(path, s.conv_convention, s.rtol, s.atol, shapes, validate, s.seed, s.device,
                    max_memory)


def _facts(run: ModelRun) -> tuple[str, ModelFacts | str]:
    if run.record is None:
        return run.path, run.error or "cannot be read"
    return run.path, facts_of_record(run.record, run.path)


def _settings(runs: Sequence[ModelRun], policy: Policy) -> dict[str, Any]:
    """The audit settings as the audit report writes them (from a record's run, else made
    here)."""
    for run in runs:
        if run.settings is not None:
            return run.settings
    from onnxcollide.linalg.spectral import ToleranceRule
    from onnxcollide.report.json_format import settings_record

    s = policy.settings
    return settings_record(s.conv_convention, ToleranceRule(s.rtol, s.atol))


# ------------------------------------------------------------------ options


def _check_outputs(options: Mapping[str, str | None], models: Sequence[str]
                   ) -> dict[str, str]:
    """The report files, checked before any work: a folder that exists, not a folder, not a
    model, no two options naming one file.

    Raises:
        UsageError: naming the option.
    """
    chosen: dict[str, str] = {}
    for option, path in options.items():
        if path is None or (option == "--output" and path == "-"):
            continue
        if not path:
            raise UsageError("needs a file name", f"{option} ''")
        _check_file(f"{option} {path}", path, models, chosen)
        chosen[option] = path
    return chosen


def _check_file(where: str, path: str, models: Sequence[str], taken: Mapping[str, str],
                in_folder: bool = True) -> None:
    """One file check writes (a report, or a baseline where ``where`` names --baseline...):
    its folder exists (unless ``in_folder`` is False: it is made), it is not a folder, not a
    model, not a file ``taken`` by another option (option -> path).

    Raises:
        UsageError: naming ``where`` (the option and the path).
    """
    folder = os.path.dirname(os.path.abspath(path))
    refuse_folder_name(path, where)
    if in_folder and not path.startswith("/dev/") and not os.path.isdir(folder):
        raise UsageError(f"the folder '{folder}' does not exist", where,
                         "create it first or choose another path")
    if not in_folder and not _folder_can_be_made(folder):
        raise UsageError(f"the folder '{folder}' cannot be made: a file is in its way", where,
                         "move the file, or choose another --baseline-dir")
    if os.path.isdir(path):
        raise UsageError("is a folder", where, "give a file name")
    for model in models:
        if os.path.exists(path) and os.path.exists(model) and os.path.samefile(path, model):
            raise UsageError(f"is the model '{model}': the {_kind(where)} would replace it",
                             where, "choose another file name")
    for other, file in taken.items():
        if os.path.realpath(file) == os.path.realpath(path):  # a link to it is the same file
            raise UsageError(f"names the same file as {other}", where,
                             "give each report and baseline its own file")


def _folder_can_be_made(folder: str) -> bool:
    """Whether ``folder`` exists or can be made: its nearest existing ancestor is a folder."""
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return os.path.isdir(folder)


def _kind(where: str) -> str:
    """What an option writes: ``baseline`` (--baseline, --baseline-dir) or ``report``."""
    return "baseline" if where.startswith("--baseline") else "report"


def _refuse_empty(options: Mapping[str, str | None]) -> None:
    """An option given as '' (a shell variable left unset) names no file or folder.

    Raises:
        UsageError: naming the option.
    """
    for option, value in options.items():
        if value == "":
            kind = "a folder" if option.endswith("dir") else "a file"
            raise UsageError(f"needs {kind} name", f"{option} ''",
                             f"give {kind}, or leave {option} out")


def _baselines(paths: Sequence[str], policy: Policy, specs: tuple[str, ...],
               folder: str | None, update: bool) -> tuple[bool, dict[str, Baseline]]:
    """(whether baselines apply, the baseline of each model) read before any audit.

    Raises:
        UsageError: --update-baseline without a place to write, a missing --baseline-dir,
            an unreadable baseline or one made with other settings.
    """
    _refuse_file_as_folder(folder)
    _refuse_empty_files(paths, specs)
    if update:
        if not specs and folder is None:
            raise UsageError("--update-baseline needs --baseline FILE or --baseline-dir DIR",
                             hint="say where to write the baselines")
        return False, {}
    if folder is not None and not os.path.isdir(folder):
        raise UsageError("the folder does not exist", f"--baseline-dir {folder}",
                         "write the baselines first with --update-baseline")
    chosen = assign_baselines(paths, specs, folder)
    for baseline in {id(b): b for b in chosen.values()}.values():
        check_settings(baseline, policy.settings)
    return bool(specs) or folder is not None, chosen


def _refuse_file_as_folder(folder: str | None) -> None:
    """--baseline-dir naming a file.

    Raises:
        UsageError: naming the option.
    """
    if folder is not None and os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError("is a file, not a folder", f"--baseline-dir {folder}",
                         "give the folder of the baselines (DIR/<model path>.json), or the "
                         "file as --baseline")


def _refuse_empty_files(paths: Sequence[str], specs: tuple[str, ...]) -> None:
    """--baseline '' or MODEL= with no file.

    Raises:
        UsageError: naming the option.
    """
    for spec in specs:
        if not split_spec(spec, paths)[1]:
            raise UsageError("needs a file name", f"--baseline {spec or repr(spec)}",
                             "give a baseline file, or leave --baseline out")


def _baseline_files(paths: Sequence[str], specs: tuple[str, ...], folder: str | None,
                    outputs: Mapping[str, str]) -> dict[str, str]:
    """The files --update-baseline writes (how errors name each -> the file), checked before
    any work as the report files are: none is a folder, a model or another option's file.

    Raises:
        UsageError: naming the option and the file.
    """
    files: dict[str, str] = {}
    taken = dict(outputs)
    for spec in specs:
        file = split_spec(spec, paths)[1]
        _check_file(f"--baseline {spec}", file, paths, taken)
        files[f"--baseline {spec}"] = taken[f"--baseline {spec}"] = file
    for path in paths if folder is not None else ():
        file = baseline_path(str(folder), path)
        where = f"--baseline-dir {folder}, {file} (the baseline of {path})"
        _check_file(where, file, paths, taken, in_folder=False)
        files[where] = taken[where] = file
    return files


# ------------------------------------------------------------------ output


def _write_reports(result: CheckResult, report: dict[str, Any], fmt: str,
                   outputs: Mapping[str, str], update: bool, specs: tuple[str, ...],
                   folder: str | None) -> None:
    """The summary (or JSON) on standard output and every report file, each written whole."""
    text = render_json(report) if fmt == "json" else summary_text(result)
    if "--output" in outputs:
        write_text(outputs["--output"], text)
        if fmt == "json":
            text = summary_text(result)
    if "--sarif" in outputs:
        write_text(outputs["--sarif"], render_sarif(result, report["tool"], os.getcwd()))
    if "--junit" in outputs:
        write_text(outputs["--junit"], render_junit(result))
    if update:
        _update_baselines(report, specs, folder)
    write_stdout(text, needed="--output" not in outputs)  # else the report is in -o
    for option, path in outputs.items():
        click.echo(f"wrote {path} ({option.lstrip('-')})", err=True)


def _refuse_external_data(files: Mapping[str, str], runs: Sequence[ModelRun]) -> None:
    """No report or baseline replaces a model's external data file (known once the models
    are read); ``files`` maps how errors name each file (the option and path) to the file.

    Raises:
        UsageError: naming the option and the model.
    """
    for where, path in files.items():
        if not os.path.exists(path):
            continue
        for run in runs:
            folder = os.path.dirname(os.path.abspath(run.path))
            for data in run.external:
                full = os.path.join(folder, data)
                if os.path.exists(full) and os.path.samefile(path, full):
                    raise UsageError(f"is an external data file of the model '{run.path}': "
                                     f"the {_kind(where)} would replace it", where,
                                     "choose another file name")


def _update_baselines(report: Mapping[str, Any], specs: tuple[str, ...],
                      folder: str | None) -> None:
    """Write each baseline as an audit report (audit-report-v1) of its model(s)."""
    paths = [m["path"] for m in report["models"]]
    for spec in specs:
        model, file = split_spec(spec, paths)
        data = single_model_report(report, model, AUDIT_SCHEMA_ID) if model else \
            multi_model_report(report, paths, AUDIT_SCHEMA_ID)
        if data is not None:
            write_text(file, json.dumps(data, indent=2, allow_nan=False) + "\n")
            click.echo(f"wrote baseline {file}", err=True)
    if folder is not None:
        for path in paths:
            data = single_model_report(report, path, AUDIT_SCHEMA_ID)
            if data is None:
                continue
            target = baseline_path(folder, path)
            try:
                os.makedirs(os.path.dirname(target), exist_ok=True)
            except OSError as exc:
                raise UsageError(f"cannot make the folder of the baseline {target} "
                                 f"({exc.strerror or exc})", f"--baseline-dir {folder}") from exc
            write_text(target, json.dumps(data, indent=2, allow_nan=False) + "\n")
            click.echo(f"wrote baseline {target}", err=True)


def _tell(runs: Sequence[ModelRun], stats: RunStats, folder: str | None) -> None:
    """Unreadable models as error lines, and how the records were obtained, on stderr."""
    for run in runs:
        if run.error is not None:
            click.echo(f"error: {run.error}", err=True)
    if stats.cache_notice:
        click.echo(stats.cache_notice, err=True)
    cache = f" from the cache ({folder})" if folder else " (no cache)"
    unreadable = sum(run.error is not None for run in runs)
    how = f"{stats.audited - unreadable} audited" + \
        (f" and {unreadable} unreadable" if unreadable else "") + \
        (f", in {stats.jobs} process(es): {stats.jobs_reason}" if stats.audited else "")
    rewritten = f"; {len(stats.rewritten)} cache entr(ies) could not be trusted and were " \
        "rewritten" if stats.rewritten else ""
    click.echo(f"{len(runs)} model(s): {how}; {stats.cached}{cache}{rewritten}", err=True)
