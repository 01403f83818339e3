"""`compare` reports: a terminal table, Markdown and JSON (``CompareFormat``), built from one
set of cells so the formats cannot drift apart. Differences come first."""

from __future__ import annotations

import enum
import io
import os
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from onnxcollide.audit.model import LayerRow, ModelAudit
from onnxcollide.compare.relate import WeightRelation
from onnxcollide.compare.results import (
    TRANSFER_RATIO,
    Comparison,
    ModelComparison,
    PairedLayer,
    TransferCheck,
)
from onnxcollide.report.compare_json import render_json
from onnxcollide.report.fields import layer_cells, model_labels, summary_cells


class CompareFormat(str, enum.Enum):
    """Output formats of ``onnxcollide compare``."""

    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"


Block = tuple[str, Sequence[str], list[tuple[str, ...]]]  # (title, headers, rows)


def _g(value: float | None) -> str:
    """A figure with 3 significant digits, ``-`` for none, ``inf`` for infinity."""
    if value is None:
        return "-"
    return f"{value:.3g}"


def _both(a: str, b: str) -> str:
    """One value where the models agree, ``a / b`` where they do not."""
    return a if a == b else f"{a} / {b}"


def relation_text(relation: WeightRelation) -> str:
    """The relation and its deciding figures in a few words."""
    parts = [relation.label()]
    if relation.scale_min is not None and relation.scale_max is not None:
        parts.append(f"scale {_g(relation.scale_min)}..{_g(relation.scale_max)}")
    if relation.max_steps is not None:
        parts.append(f"{relation.max_steps:.2f} step")
    if relation.note:
        parts.append(relation.note)
    return "; ".join(parts)


PAIR_HEADERS = ("#", "reference node", "node", "op", "q", "p", "rank", "nullity", "margin",
                "method", "weights", "max |diff|", "match")


def _margin(row: LayerRow) -> str:
    return layer_cells(row)[12]


def pair_cells(pair: PairedLayer) -> tuple[str, ...]:
    """One aligned pair as text cells (headers: PAIR_HEADERS): values that differ between
    the models as ``reference / other`` (a rank that differs only through the tolerance with
    ``(tol)``); the match's confidence and what decided it, with a ``?`` where it is
    ambiguous."""
    a, b, m = pair.reference, pair.other, pair.match
    flag = " ?" if m.ambiguous_with else ""
    tolerance = " (tol)" if pair.tolerance_only else ""
    return (
        str(a.index), a.layer.nodes[0], b.layer.nodes[0], _both(a.layer.op, b.layer.op),
        str(a.layer.q), str(a.layer.p), _both(str(a.rank), str(b.rank)) + tolerance,
        _both(str(a.nullity), str(b.nullity)), f"{_margin(a)} / {_margin(b)}",
        _both(a.decision.method, b.decision.method), relation_text(pair.relation),
        _g(pair.relation.max_abs), f"{m.confidence:.2f} {m.basis}{flag}",
    )


def _pair_block(label: str, ref_label: str, result: ModelComparison) -> Block:
    title = (f"{ref_label} vs {label}: {len(result.pairs)} aligned, "
             f"{len(result.unmatched_reference)} + {len(result.unmatched_other)} unmatched")
    return title, PAIR_HEADERS, [pair_cells(p) for p in result.pairs]


UNMATCHED_HEADERS = ("model", "node", "op", "q", "p", "groups", "rank", "nullity")


def _unmatched_rows(label: str, rows: Sequence[LayerRow]) -> list[tuple[str, ...]]:
    return [(label, r.layer.nodes[0], r.layer.op, str(r.layer.q), str(r.layer.p),
             str(r.layer.groups), str(r.rank), str(r.nullity)) for r in rows]


TABLE1_METRICS = ("n", "nu", "nu/n", "mu", "mu/n", "sum nullity", "nullity(W1)", "W1 class",
                  "skipped", "unclear")


def table1_block(audits: Sequence[ModelAudit]) -> Block:
    """Table 1 side by side: a row per metric, a column per model, and whether they agree."""
    labels = model_labels(audits)
    columns = [summary_cells(a, label)[1:] for a, label in zip(audits, labels, strict=True)]
    rows = []
    for k, metric in enumerate(TABLE1_METRICS):
        values = [c[k] for c in columns]
        rows.append((metric, *values, "yes" if len(set(values)) == 1 else "NO"))
    return "Table 1 (Ozbulak et al., Eq. 6), side by side", ("metric", *labels, "same"), rows


RUN_HEADERS = ("model", "inputs", "output", "max abs", "max rel", "argmax", "tolerance",
               "verdict")


def _run_rows(label: str, result: ModelComparison) -> list[tuple[str, ...]]:
    run = result.run
    if run is None:
        return []
    inputs = ", ".join(f"{m.other} ({m.layout})" if m.layout else m.other for m in run.inputs)
    verdict = "-" if run.agree is None else ("agree" if run.agree else "DIFFER")
    tolerance = run.judged if run.tolerance is None else f"{run.tolerance:g} ({run.judged})"
    return [(label, inputs, o.other + (f" ({o.layout})" if o.layout else ""), _g(o.max_abs),
             _g(o.max_rel), _g(o.argmax_agree), tolerance, verdict) for o in run.outputs]


TRANSFER_HEADERS = ("model", "W1 output", "W1 residual", "random W1 residual", "ratio",
                    "outputs max rel", "verdict")


def _transfer_row(label: str, check: TransferCheck) -> tuple[str, ...]:
    verdict = check.verdict + (f": {check.reason}" if check.reason else "")
    ratio = "inf" if check.ratio is None and check.layer_residual == 0 else _g(check.ratio)
    return (label, check.w1 or "-", _g(check.layer_residual), _g(check.baseline_residual),
            ratio, _g(check.output_max_rel), verdict)


def _headline(comparison: Comparison, labels: Sequence[str]) -> list[str]:
    others = len(comparison.others)
    lines = [f"compare: reference {labels[0]} against {others} model{'s' * (others != 1)}"]
    if comparison.same:
        lines.append("same: every aligned layer has the same rank and nullity, the weights "
                     "relate, nothing is unmatched"
                     + (", outputs agree" if comparison.settings.run else "")
                     + (", collisions transfer" if comparison.settings.transfer else "")
                     + (" (ranks that differ by the tolerance alone: see the notes)"
                        if any(p.tolerance_only for r in comparison.others for p in r.pairs)
                        else ""))
    else:
        count = len(comparison.differences)
        lines.append(f"{count} difference{'s' * (count != 1)}:")
        lines += [f"  - {os.path.basename(d.model)}: {d.text}" for d in comparison.differences]
    return lines


def _blocks(comparison: Comparison) -> tuple[list[str], list[Block], list[str]]:
    """(headline lines, tables, closing lines) that every text format shows."""
    audits = [comparison.reference, *(r.audit for r in comparison.others)]
    labels = model_labels(audits)
    blocks: list[Block] = []
    for label, result in zip(labels[1:], comparison.others, strict=True):
        blocks.append(_pair_block(label, labels[0], result))
    unmatched = []
    for label, result in zip(labels[1:], comparison.others, strict=True):
        unmatched += _unmatched_rows(f"{labels[0]} (no partner in {label})",
                                     result.unmatched_reference)
        unmatched += _unmatched_rows(label, result.unmatched_other)
    if unmatched:
        blocks.append(("Layers with no partner", UNMATCHED_HEADERS, unmatched))
    blocks.append(table1_block(audits))
    runs = [row for label, r in zip(labels[1:], comparison.others, strict=True)
            for row in _run_rows(label, r)]
    if comparison.settings.run:
        blocks.append((f"--run: outputs on the same inputs (seed {comparison.settings.seed})",
                       RUN_HEADERS, runs))
    closing = [f"note: {n}" for n in comparison.notes]
    if comparison.settings.transfer:
        closing += _transfer_lines(comparison)
        checks = [(labels[0] + " (reference)", comparison.reference_transfer)] + [
            (label, r.transfer) for label, r in zip(labels[1:], comparison.others, strict=True)]
        rows = [_transfer_row(label, c) for label, c in checks if c is not None]
        if rows:
            blocks.append(("--transfer: the reference's colliding inputs in every model",
                           TRANSFER_HEADERS, rows))
    closing.append(_legend(comparison))
    return _headline(comparison, labels), blocks, closing


def _transfer_lines(comparison: Comparison) -> list[str]:
    source = comparison.source
    if source is None or not source.made:
        return []
    norms = ", ".join(_g(n) for n in source.norms)
    return [f"--transfer: {source.count} exact colliding input(s) for '{source.input}' "
            f"({source.exactness}; {source.method}), perturbation norms {norms}, kept inside "
            f"the inputs' range"]


def _legend(comparison: Comparison) -> str:
    rule = comparison.settings.audit.rule.describe()
    text = (f"tolerance: {rule}; conv convention: {comparison.settings.audit.convention.value}; "
            "values that differ are shown as reference / other; match: confidence (1: the "
            "next-best choice costs 0.5 more) and what decided it, '?' where ambiguous")
    if comparison.settings.transfer:
        text += (f"; transfer verdicts: PASS within the validation tolerances, APPROXIMATE W1 "
                 f"residual at least {TRANSFER_RATIO:g}x below a random perturbation's of "
                 "equal norm (quantization, fp16), FAIL otherwise")
    return text


def render_table(comparison: Comparison, width: int = 160, color: bool = False) -> str:
    """The report as terminal tables (rich); no line ends in spaces."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system="auto" if color else None,
                      force_terminal=color, highlight=False)
    head, blocks, closing = _blocks(comparison)
    for line in head:
        console.print(line, markup=False, soft_wrap=True)
    for title, headers, rows in blocks:
        table = Table(title=Text(title), title_justify="left")
        for header in headers:
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        console.print(table)
    for line in closing:
        console.print(line, markup=False, soft_wrap=True)
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def _md_cell(text: str) -> str:
    return " ".join(text.splitlines()).replace("|", "\\|")


def render_markdown(comparison: Comparison, width: int = 160, color: bool = False) -> str:
    """The report as a Markdown document (GitHub tables)."""
    head, blocks, closing = _blocks(comparison)
    lines = ["# onnxcollide compare", "", *(_md_cell(h) for h in head[:1]), ""]
    lines += [_md_cell(h) if not h.startswith("  - ") else "- " + _md_cell(h[4:])
              for h in head[1:]]
    for title, headers, rows in blocks:
        lines += ["", f"## {_md_cell(title)}", "",
                  "| " + " | ".join(_md_cell(h) for h in headers) + " |",
                  "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    lines += [""] + [f"- {_md_cell(line)}" for line in closing]
    return "\n".join(lines) + "\n"


def _json(comparison: Comparison, width: int = 160, color: bool = False) -> str:
    return render_json(comparison)


RENDERERS: dict[CompareFormat, Callable[[Comparison, int, bool], str]] = {
    CompareFormat.TABLE: render_table,
    CompareFormat.JSON: _json,
    CompareFormat.MARKDOWN: render_markdown,
}


def render_comparison(comparison: Comparison, fmt: CompareFormat, width: int = 160,
                      color: bool = False) -> str:
    """The comparison in ``fmt``; the text ends with a newline."""
    text = RENDERERS[fmt](comparison, width, color)
    return text if text.endswith("\n") else text + "\n"
