"""CSV: one row per layer (with the model's file), or one row per model with --summary-only."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from onnxcollide.audit.model import LayerRow, ModelAudit
from onnxcollide.report.fields import (
    check_verdict,
    digits_text,
    is_checked,
    summary_table,
)
from onnxcollide.report.json_format import layer_dict, settings_dict
from onnxcollide.report.options import RenderOptions

LAYER_COLUMNS = ("index", "nodes", "op", "weight", "q", "p", "groups", "rank", "nullity", "nu",
                 "mu", "compute_dtype", "eps", "sigma_max", "tol", "smallest_kept",
                 "largest_dropped", "margin", "clear", "method", "layout")


SETTINGS_COLUMNS = ("tolerance_rule", "conv_convention")  # the call's settings, on every row


def _settings_cells(audits: Sequence[ModelAudit]) -> tuple[str, str]:
    """The settings every number of the CSV was decided with (SETTINGS_COLUMNS), so a CSV
    made with other settings can be told apart."""
    settings = settings_dict(audits)
    return settings["tolerance_rule"], settings["conv_convention"]


def _summary_values(audit: ModelAudit, label: str) -> tuple[object, ...]:
    """One model's Table 1 row as plain values for a machine (headers: SUMMARY_HEADERS):
    ratios as fractions, counts without thousands separators, '' where there is none."""
    m = audit.metrics
    first = audit.first_layer
    return (label, m.n, m.nu, m.nu_ratio, m.mu, m.mu_ratio, m.nullity_sum,
            "" if m.nullity_w1 is None else m.nullity_w1, first.exactness if first else "",
            m.skipped_weights, m.unclear)


def _layer_cells(row: LayerRow) -> dict[str, object]:
    """One layer's cells by column name: spectral values with the digits their error estimates
    resolve, trailing zeros kept (bounds, digits 0, keep their 2 digits as in the JSON)."""
    data = layer_dict(row)
    data["nodes"] = ";".join(data["nodes"])
    for name, (value, digits) in row.decision.resolved().items():
        if value is not None and digits:
            data[name] = digits_text(value, digits)
    return data


def render(audits: Sequence[ModelAudit], options: RenderOptions) -> str:
    """CSV text with a header row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    settings = _settings_cells(audits)
    if options.summary_only:
        headers, _ = summary_table(audits)
        writer.writerow((*headers, *SETTINGS_COLUMNS))
        checked = is_checked(audits)
        # The model as its path, as given (as in the per-layer rows): a machine's key.
        writer.writerows((*_summary_values(a, a.path), *((check_verdict(a),) if checked else ()),
                          *settings) for a in audits)
        return out.getvalue()
    checked = is_checked(audits)
    writer.writerow(("model", *LAYER_COLUMNS, *(("w1_check",) if checked else ()),
                     *SETTINGS_COLUMNS))
    for audit in audits:
        w1_row = audit.first_layer.row_index if audit.first_layer else None
        for row in audit.rows:
            data = _layer_cells(row)
            check = (check_verdict(audit) if row.index == w1_row else "",) if checked else ()
            writer.writerow((audit.path, *("" if data[c] is None else data[c]
                                           for c in LAYER_COLUMNS), *check, *settings))
    return out.getvalue()
