"""CSV: one row per layer (with the model's file), or one row per model with --summary-only."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from onnxcollide.audit import ModelAudit
from onnxcollide.report import RenderOptions
from onnxcollide.report.fields import check_verdict, is_checked, summary_table
from onnxcollide.report.json_format import layer_dict

LAYER_COLUMNS = ("index", "nodes", "op", "weight", "q", "p", "groups", "rank", "nullity", "nu",
                 "mu", "compute_dtype", "eps", "sigma_max", "tol", "smallest_kept",
                 "largest_dropped", "margin", "clear", "method", "layout")


def render(audits: Sequence[ModelAudit], options: RenderOptions) -> str:
    """CSV text with a header row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if options.summary_only:
        headers, rows = summary_table(audits)
        writer.writerow(headers)
        writer.writerows(rows)
        return out.getvalue()
    checked = is_checked(audits)
    writer.writerow(("model", *LAYER_COLUMNS, *(("w1_check",) if checked else ())))
    for audit in audits:
        w1_row = audit.first_layer.row_index if audit.first_layer else None
        for row in audit.rows:
            data = layer_dict(row)
            data["nodes"] = ";".join(data["nodes"])
            check = (check_verdict(audit) if row.index == w1_row else "",) if checked else ()
            writer.writerow((audit.path, *("" if data[c] is None else data[c]
                                           for c in LAYER_COLUMNS), *check))
    return out.getvalue()
