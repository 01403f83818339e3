"""CSV: one row per layer (with the model's file), or one row per model with --summary-only."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from onnxcollide.audit import ModelAudit
from onnxcollide.report import RenderOptions
from onnxcollide.report.fields import SUMMARY_HEADERS, summary_cells
from onnxcollide.report.json_format import layer_dict

LAYER_COLUMNS = ("index", "nodes", "op", "weight", "q", "p", "groups", "rank", "nullity", "nu",
                 "mu", "compute_dtype", "eps", "sigma_max", "tol", "smallest_kept",
                 "largest_dropped", "margin", "clear", "method", "layout")


def render(audits: Sequence[ModelAudit], options: RenderOptions) -> str:
    """CSV text with a header row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if options.summary_only:
        writer.writerow(SUMMARY_HEADERS)
        writer.writerows(summary_cells(a) for a in audits)
        return out.getvalue()
    writer.writerow(("model", *LAYER_COLUMNS))
    for audit in audits:
        for row in audit.rows:
            data = layer_dict(row)
            data["nodes"] = ";".join(data["nodes"])
            writer.writerow((audit.path, *("" if data[c] is None else data[c]
                                           for c in LAYER_COLUMNS)))
    return out.getvalue()
