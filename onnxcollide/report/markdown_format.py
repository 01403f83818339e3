"""Markdown: the Table 1 summary, then each model's layers and W1 (GitHub tables)."""

from __future__ import annotations

from collections.abc import Sequence

from onnxcollide.audit.model import ModelAudit
from onnxcollide.report.fields import (
    LAYER_HEADERS,
    first_layer_lines,
    layer_cells,
    model_labels,
    skipped_line,
    summary_legend,
    summary_table,
)
from onnxcollide.report.json_format import settings_dict
from onnxcollide.report.options import RenderOptions


def _one_line(text: str) -> str:
    """A model-supplied name on one line: a newline would end a table row or a heading."""
    return " ".join(text.splitlines())


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(_one_line(c).replace("|", "\\|") for c in cells) + " |"

    return [line(headers), "|" + "|".join("---" for _ in headers) + "|", *map(line, rows)]


def render(audits: Sequence[ModelAudit], options: RenderOptions) -> str:
    """Markdown document text."""
    settings = settings_dict(audits)
    lines = ["# onnxcollide audit", "",
             f"Tolerance: `{settings['tolerance_rule']}`; conv convention: "
             f"`{settings['conv_convention']}`.", "", "## Table 1", ""]
    lines += _table(*summary_table(audits))
    lines += ["", _one_line(summary_legend(settings["clear_margin"])) + "."]
    if options.summary_only:
        return "\n".join(lines) + "\n"
    for audit, label in zip(audits, model_labels(audits), strict=True):
        check = ([f"W1 check (seed {audit.validation['seed']}): {audit.validation['verdict']}"]
                 if audit.validation is not None else [])
        lines += ["", f"## {_one_line(label)}", "", "```",
                  *map(_one_line, first_layer_lines(audit)), *check, "```", ""]
        lines += _table(LAYER_HEADERS, [layer_cells(r) for r in audit.rows])
        lines += [f"- {_one_line(note)}" for note in audit.notes]
        lines += [_one_line(f"- {skipped_line(s)}") for s in audit.skipped]
    return "\n".join(lines) + "\n"
