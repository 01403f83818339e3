"""Renderers for audit results: one module per format behind one small interface.

Adding a format touches one module and the ``Format`` enum; tests check every value renders.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from onnxcollide.audit import ModelAudit


class Format(str, enum.Enum):
    """Output formats of ``onnxcollide audit``."""

    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"
    CSV = "csv"


@dataclass(frozen=True)
class RenderOptions:
    """Choices that change how results are shown, never what they are.

    Attributes:
        summary_only: show only the Table 1 summary (one row per model).
        width: terminal width for the table format.
        color: use colour in the table format.
    """

    summary_only: bool = False
    width: int = 120
    color: bool = False


Renderer = Callable[[Sequence[ModelAudit], RenderOptions], str]


def renderer(fmt: Format) -> Renderer:
    """Return the render function of ``fmt``."""
    from onnxcollide.report import csv_format, json_format, markdown_format, table_format

    table: dict[Format, Renderer] = {
        Format.TABLE: table_format.render,
        Format.JSON: json_format.render,
        Format.MARKDOWN: markdown_format.render,
        Format.CSV: csv_format.render,
    }
    return table[fmt]


def render(audits: Sequence[ModelAudit], fmt: Format, options: RenderOptions | None = None) -> str:
    """Render audits of one or more models in ``fmt``; the text ends with a newline."""
    text = renderer(fmt)(audits, options or RenderOptions())
    return text if text.endswith("\n") else text + "\n"
