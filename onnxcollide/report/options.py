"""What the audit formats share: the ``Format`` enum and the display choices."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from onnxcollide.audit.model import ModelAudit


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
