"""Render audits in any ``Format``: one function per format module, looked up here."""

from __future__ import annotations

from collections.abc import Sequence

from onnxcollide.audit.model import ModelAudit
from onnxcollide.report import csv_format, json_format, markdown_format, table_format
from onnxcollide.report.options import Format, Renderer, RenderOptions


def renderer(fmt: Format) -> Renderer:
    """Return the render function of ``fmt``."""
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
