"""Running the audits of `onnxcollide check`: which files, how many processes, the cache.

Models are audited in parallel processes (``--jobs``), each result is a JSON record (the audit
report's model), and records come back in the order the models were given whatever the
scheduling. A cache hit is read without importing numpy, scipy or onnx, so a warm re-run is
quick. A model that cannot be read becomes an error line of its own; a worker that dies (out
of memory) costs only its own model.
"""

from __future__ import annotations

import glob
import importlib.metadata
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from onnxcollide._version import __version__
from onnxcollide.cli.options import apply_max_memory
from onnxcollide.errors import OnnxCollideError, UsageError
from onnxcollide.report.cache import (
    cache_key,
    entry_path,
    external_digests,
    file_sha256,
    read_entry,
    write_entry,
)

JOB_BASE_BYTES = 300 * 2**20  # a worker's interpreter, numpy, scipy, onnx (measured ~100 MB)
JOB_BYTES_PER_MODEL_BYTE = 3  # weights, their float64 blocks, Gram matrices (measured ~2x)
GLOB_CHARS = "*?["


# ------------------------------------------------------------------ which files


def collect_models(arguments: Sequence[str]) -> list[str]:
    """The model files the arguments name, in the order given: a file as it is, a folder as
    every ``.onnx`` under it (sorted), a glob as every ``.onnx`` it matches (sorted; folders
    it matches are searched too). The same file named twice is checked once, under its own
    path rather than a symbolic link's (baselines are matched by path).

    Raises:
        UsageError: a folder or glob that holds no ``.onnx`` file.
    """
    found: dict[str, str] = {}
    for argument in arguments:
        if os.path.isdir(argument):
            files = _onnx_under(argument)
            if not files:
                raise UsageError("the folder holds no .onnx file", argument,
                                 "give a folder with models, or the model files")
        elif any(c in argument for c in GLOB_CHARS) and not os.path.exists(argument):
            files = []
            for match in sorted(glob.glob(argument, recursive=True)):
                files += _onnx_under(match) if os.path.isdir(match) else \
                    [match] if match.endswith(".onnx") else []
            if not files:
                raise UsageError("the pattern matches no .onnx file", argument,
                                 "check the pattern (quote it so the shell leaves it alone)")
        else:
            files = [argument]  # missing or not ONNX: the audit says why (exit 3)
        for path in files:
            real = os.path.realpath(path)
            if real not in found or (os.path.islink(found[real]) and not os.path.islink(path)):
                found[real] = path  # a link and its target: the target's own path names it
    return list(found.values())


def _onnx_under(folder: str) -> list[str]:
    files = []
    for parent, folders, names in os.walk(folder):
        folders.sort()
        files += [os.path.join(parent, n) for n in sorted(names) if n.endswith(".onnx")]
    return sorted(files)


# ------------------------------------------------------------------ one audit


@dataclass(frozen=True)
class AuditJob:
    """What decides one model's record.

    Attributes:
        path: the model as given.
        conv_convention, rtol, atol: the audit settings.
        input_shapes: (name, dims) overrides for this model.
        validate: also run the W1 check in ONNX Runtime (the ``w1-validated`` rule).
        seed, device: that check's seed and device.
        max_memory: ``--max-memory`` as given (None: the default limit); it refuses arrays
            larger than that, so it changes no result and is not part of the cache key.
    """

    path: str
    conv_convention: str = "grouped"
    rtol: float | None = None
    atol: float | None = None
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    validate: bool = False
    seed: int = 0
    device: str = "auto"
    max_memory: str | None = None

    def settings(self) -> dict[str, Any]:
        """The settings part of the cache key."""
        return {"conv_convention": self.conv_convention, "rtol": self.rtol, "atol": self.atol,
                "input_shapes": {name: list(dims) for name, dims in self.input_shapes},
                "validate": {"seed": self.seed, "device": self.device,
                             "precision": "float32"} if self.validate else None}


def run_job(job: AuditJob) -> dict[str, Any]:
    """Audit one model (and validate W1 when asked): ``{"record", "settings", "external"}``,
    or ``{"error", "exit_code"}`` when it cannot be read. Runs in a worker process."""
    from dataclasses import replace

    from onnxcollide.audit.layers import ConvConvention
    from onnxcollide.audit.model import AuditSettings, audit_model
    from onnxcollide.graph.load import external_data_files, load_model
    from onnxcollide.linalg.spectral import ToleranceRule
    from onnxcollide.report.json_format import model_dict, settings_dict

    rule = ToleranceRule(job.rtol, job.atol)
    settings = AuditSettings(ConvConvention(job.conv_convention), rule, job.input_shapes)
    try:
        apply_max_memory(job.max_memory)  # in force in this process (a worker, or the check)
        audit = audit_model(job.path, settings)
        if job.validate:
            from onnxcollide.runtime.collisions import check_w1

            audit = replace(audit, validation=check_w1(job.path, dict(job.input_shapes),
                                                       job.seed, job.device, "float32", rule))
        external = external_data_files(load_model(job.path))
    except OnnxCollideError as exc:
        return {"error": exc.one_line(), "exit_code": exc.exit_code}
    except MemoryError:
        return {"error": f"{job.path}: out of memory while auditing. Check it alone "
                         "(--jobs 1) or on a machine with more memory.", "exit_code": 3}
    except Exception as exc:  # a bug: reported for this model, the others go on
        return {"error": f"{job.path}: internal error ({type(exc).__name__}: {exc}); this is a "
                         "bug in onnxcollide: please report it with the output of "
                         f"'onnxcollide audit --debug {job.path}'", "exit_code": 3}
    return {"record": model_dict(audit), "settings": settings_dict([audit]),
            "external": external_digests(job.path, external)}


# ------------------------------------------------------------------ many audits


@dataclass
class RunStats:
    """How the records were obtained (shown on stderr, never in a report)."""

    audited: int = 0
    cached: int = 0
    jobs: int = 1
    jobs_reason: str = ""
    cache_notice: str = ""
    rewritten: list[str] = field(default_factory=list)


def tool_versions(validate: bool) -> dict[str, str]:
    """Versions of onnxcollide and the libraries whose numerics decide the records (read
    from the installed packages' metadata, so no library is imported)."""
    versions = {"onnxcollide": __version__}
    for name in ("onnx", "numpy", "scipy"):
        versions[name] = _installed(name) or "unknown"
    if validate:
        versions["onnxruntime"] = _installed("onnxruntime") or \
            _installed("onnxruntime-gpu") or "unknown"
    return versions


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux: MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def plan_jobs(requested: int | None, pending: int, largest_bytes: int, cores: int,
              memory: int | None) -> tuple[int, str]:
    """How many worker processes to run, and why that many.

    Args:
        requested: ``--jobs`` (None: one per core).
        pending: models to audit.
        largest_bytes: the largest model's size (its file and external data).
        cores: usable cores.
        memory: available memory in bytes (None: unknown, no cap).
    """
    wanted = requested if requested is not None else cores
    why = f"--jobs {requested}" if requested is not None else f"one per core ({cores})"
    per_job = JOB_BASE_BYTES + JOB_BYTES_PER_MODEL_BYTE * largest_bytes
    if memory is not None and memory // per_job < wanted:
        wanted = max(1, memory // per_job)
        why = (f"{why}, capped to {wanted} by memory: {memory / 2**30:.1f} GiB available, "
               f"about {per_job / 2**30:.2f} GiB per job for the largest model")
    if pending < wanted:
        why = f"{why}, no more than the {pending} model(s) to audit"
    return max(1, min(wanted, pending)), why


def model_bytes(path: str) -> int:
    """A model's size on disk with its external data (0 if it cannot be read)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return 0
    try:
        from onnxcollide.graph.load import external_data_files, load_model

        return size + sum(os.path.getsize(f) for f in external_data_files(load_model(path))
                          if os.path.isfile(f))
    except (OnnxCollideError, OSError):
        return size


@dataclass(frozen=True)
class ModelRun:
    """One model's result: its record and the settings it was made with, or why not."""

    path: str
    record: dict[str, Any] | None
    settings: dict[str, Any] | None
    error: str | None = None
    exit_code: int = 0
    external: tuple[str, ...] = ()  # its external data files, relative to its folder


def run_models(jobs_list: Sequence[AuditJob], jobs: int | None, cache_dir: str | None,
               keep_going: bool, stats: RunStats,
               worker: Callable[[AuditJob], dict[str, Any]] = run_job) -> list[ModelRun]:
    """Every model's record, in the order of ``jobs_list``: from the cache where an entry can
    be trusted, else audited (in ``jobs`` processes) and written to the cache.

    Raises:
        UsageError: a model's audit raised a usage error (an --input-shape it lacks).
        OnnxCollideError: a model cannot be read and ``keep_going`` is off.
    """
    validate = any(j.validate for j in jobs_list)
    tool = tool_versions(validate)
    results: dict[int, dict[str, Any]] = {}
    keys: dict[int, str | None] = {}
    for k, job in enumerate(jobs_list):
        keys[k] = None
        # only a regular file is hashed: a pipe would block (its audit then says what it is)
        digest = file_sha256(job.path) if cache_dir and os.path.isfile(job.path) else None
        if cache_dir and digest:
            key = keys[k] = cache_key(digest, job.settings(), tool)
            payload = read_entry(cache_dir, key, digest, job.path)
            if payload is not None:
                payload["record"]["path"] = job.path
                results[k] = payload
                stats.cached += 1
            elif os.path.exists(entry_path(cache_dir, key)):
                stats.rewritten.append(job.path)  # there, but not to be trusted
    pending = [k for k in range(len(jobs_list)) if k not in results]
    for k, outcome in _audit_all(jobs_list, pending, jobs, keep_going, stats, worker):
        results[k] = outcome
        if "record" in outcome and cache_dir:
            key = cache_key(outcome["record"]["sha256"], jobs_list[k].settings(), tool)
            if not write_entry(cache_dir, key, outcome) and not stats.cache_notice:
                stats.cache_notice = (f"notice: the cache folder {cache_dir} cannot be "
                                      "written; checking without a cache")
    stats.audited = len(pending)
    return [_model_run(job.path, results[k]) for k, job in enumerate(jobs_list)]


def _model_run(path: str, outcome: dict[str, Any]) -> ModelRun:
    if "record" in outcome:
        return ModelRun(path, outcome["record"], outcome["settings"],
                        external=tuple(e["file"] for e in outcome["external"]))
    return ModelRun(path, None, None, outcome["error"], outcome["exit_code"])


def _raise_if_fatal(outcome: dict[str, Any], keep_going: bool) -> None:
    """A usage error always stops the check; an unreadable model when not ``keep_going``."""
    if "error" not in outcome:
        return
    if outcome["exit_code"] == UsageError.exit_code or not keep_going:
        error = UsageError(outcome["error"]) if outcome["exit_code"] == UsageError.exit_code \
            else OnnxCollideError(outcome["error"])
        raise error


def _audit_all(jobs_list: Sequence[AuditJob], pending: list[int], jobs: int | None,
               keep_going: bool, stats: RunStats,
               worker: Callable[[AuditJob], dict[str, Any]]
               ) -> list[tuple[int, dict[str, Any]]]:
    """Audit the ``pending`` models, in this process or in worker processes."""
    if not pending:
        stats.jobs, stats.jobs_reason = 0, "every model from the cache"
        return []
    cores = usable_cores()
    wanted = jobs if jobs is not None else cores
    parallel = min(wanted, len(pending)) > 1
    largest = max(model_bytes(jobs_list[k].path) for k in pending) if parallel else 0
    count, stats.jobs_reason = plan_jobs(jobs, len(pending), largest, cores,
                                         available_memory() if parallel else None)
    stats.jobs = count
    if count == 1:
        done = []
        for k in pending:
            outcome = worker(jobs_list[k])
            _raise_if_fatal(outcome, keep_going)
            done.append((k, outcome))
        return done
    return _in_processes(jobs_list, pending, count, cores, keep_going, worker)


def _in_processes(jobs_list: Sequence[AuditJob], pending: list[int], count: int, cores: int,
                  keep_going: bool, worker: Callable[[AuditJob], dict[str, Any]]
                  ) -> list[tuple[int, dict[str, Any]]]:
    """Audit in ``count`` processes; models whose worker died are retried one per process,
    and one that kills its own worker again is reported as unreadable."""
    _prepare_workers(count, cores)
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    done: dict[int, dict[str, Any]] = {}
    lost: list[int] = []
    with ProcessPoolExecutor(count, mp_context=context) as pool:
        futures: dict[Future[dict[str, Any]], int] = {
            pool.submit(worker, jobs_list[k]): k for k in pending}
        try:
            for future in as_completed(futures):
                k = futures[future]
                try:
                    done[k] = future.result()
                except BrokenProcessPool:
                    lost.append(k)
                    continue
                _raise_if_fatal(done[k], keep_going)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    for k in sorted(lost):
        done[k] = _alone(jobs_list[k], context, worker)
        _raise_if_fatal(done[k], keep_going)
    return sorted(done.items())


def _alone(job: AuditJob, context: Any, worker: Callable[[AuditJob], dict[str, Any]]
           ) -> dict[str, Any]:
    """Audit one model in a process of its own (after a worker died)."""
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        try:
            return pool.submit(worker, job).result()
        except BrokenProcessPool:
            return {"error": f"{job.path}: the process auditing it ended abruptly (out of "
                             "memory?). Check it alone (--jobs 1) or on a machine with more "
                             "memory.", "exit_code": 3}


def _prepare_workers(count: int, cores: int) -> None:
    """Share the cores among the workers' BLAS threads (unless the user chose), and load the
    audit's libraries once here so forked workers start with them."""
    if "numpy" not in sys.modules:
        threads = str(max(1, cores // count))
        for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, threads)
    import onnxcollide.audit.model
    import onnxcollide.report.json_format  # noqa: F401
