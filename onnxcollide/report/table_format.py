"""Terminal tables (rich): each model's layers and W1, then the Table 1 summary."""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

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

_NUMERIC = {"#", "q", "p", "groups", "rank", "nullity", "sigma_max", "tol", "margin", "n", "nu",
            "nu/n", "mu", "mu/n", "sum nullity", "nullity(W1)", "skipped", "unclear"}


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A rich table whose title and cells are plain text: names from the model such as
    ``[/bold]`` are shown as they are, never read as rich markup."""
    table = Table(title=Text(title), title_justify="left", show_lines=False)
    for header in headers:
        table.add_column(header, justify="right" if header in _NUMERIC else "left",
                         overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def render(audits: Sequence[ModelAudit], options: RenderOptions) -> str:
    """The tables as text (ANSI colour only when options.color): sentences (W1, notes,
    skipped ops) are whole lines, wrapped by the terminal, not cut at ``options.width``; no
    line ends in spaces."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=options.width, color_system="auto" if options.color
                      else None, force_terminal=options.color, highlight=False)
    settings = settings_dict(audits)
    if not options.summary_only:
        for audit, label in zip(audits, model_labels(audits), strict=True):
            rows = [layer_cells(r) for r in audit.rows]
            console.print(_table(f"{label}: {len(rows)} weights", LAYER_HEADERS, rows))
            for line in first_layer_lines(audit):
                console.print(line, markup=False, soft_wrap=True)
            if audit.validation is not None:
                console.print(f"W1 check (seed {audit.validation['seed']}): "
                              f"{audit.validation['verdict']}", markup=False, soft_wrap=True)
            for note in audit.notes:
                console.print(f"note: {note}", markup=False, soft_wrap=True)
            for skipped in audit.skipped:
                console.print(skipped_line(skipped), markup=False, soft_wrap=True)
            console.print()
    console.print(_table("Table 1 (Ozbulak et al., Eq. 6)", *summary_table(audits)))
    console.print(f"tolerance: {settings['tolerance_rule']}; conv convention: "
                  f"{settings['conv_convention']}; {summary_legend(settings['clear_margin'])}",
                  markup=False, soft_wrap=True)
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())
