"""Shared numbers and labels for every report format, so formats cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence

from onnxcollide.audit.model import FirstLayer, LayerRow, ModelAudit
from onnxcollide.graph.input_path import MAX_COUNTED_ELEMENTS, NOT_APPLICABLE
from onnxcollide.graph.linear_ops import SkippedOp


def model_name(audit: ModelAudit) -> str:
    """The model's file name without folders."""
    return audit.path.replace("\\", "/").rsplit("/", 1)[-1]


def model_labels(audits: Sequence[ModelAudit]) -> list[str]:
    """How tables name each model: its file name, or the path as given where two models of
    one report share a file name (model zoos call every file model.onnx)."""
    names = [model_name(a) for a in audits]
    return [a.path if names.count(name) > 1 else name
            for a, name in zip(audits, names, strict=True)]


def digits_text(value: float, digits: int) -> str:
    """``value`` written with exactly ``digits`` significant digits, trailing zeros kept
    (``0.5320`` for 4 digits), so a machine-read cell shows how many digits are resolved;
    a whole number as such where its last digit is not 0 (``74``, ``4004``), else in
    scientific notation, where positional notation would hide them (``5.0e+01``, not
    ``50``)."""
    if value == 0:
        return "0"  # an exact zero (a pruned unit's singular value), whatever the digit count
    text = f"{value:#.{digits}g}"
    if text.endswith(".") and not text.endswith("0."):  # '74.': every digit shows
        return text[:-1]
    if text.endswith(".") or ".e" in text:  # '50.' or '5.e+01': a bare point
        return f"{value:.{digits - 1}e}"
    return text


def fmt_percent(ratio: float) -> str:
    """``0.8 -> 80%`` as in the paper's Table 1."""
    return f"{ratio:.0%}"


def nodes_label(row: LayerRow) -> str:
    """First node, plus how many others share the parameter."""
    nodes = row.layer.nodes
    return nodes[0] if len(nodes) == 1 else f"{nodes[0]} (+{len(nodes) - 1} more)"


# Table 1 of the paper: one row per model.
SUMMARY_HEADERS = ("model", "n", "nu", "nu/n", "mu", "mu/n", "sum nullity", "nullity(W1)",
                   "W1 class", "skipped", "unclear")


def summary_cells(audit: ModelAudit, label: str) -> tuple[str, ...]:
    """One model's Table 1 row as text cells (headers: SUMMARY_HEADERS), named ``label``."""
    m = audit.metrics
    first = audit.first_layer
    return (
        label, str(m.n), str(m.nu), fmt_percent(m.nu_ratio), str(m.mu),
        fmt_percent(m.mu_ratio), f"{m.nullity_sum:,}",
        "-" if m.nullity_w1 is None else f"{m.nullity_w1:,}",
        first.exactness if first else "-", str(m.skipped_weights), str(m.unclear),
    )


def summary_legend(clear_margin: float) -> str:
    """What the summary's last columns and the layer tables' ``!`` mean."""
    return (f"skipped: ops holding weights that are not analysed (not counted in n; listed as "
            f"'skipped weights'; linear ops whose operands are all computed at run time, such "
            f"as attention scores, hold no weight and are listed as 'no weight'); unclear: "
            f"rows whose margin is under {clear_margin:g}, marked '!' (the rank would change "
            "if tol moved that much)")


def skipped_line(skipped: SkippedOp) -> str:
    """One skipped op, naming its kind: an op holding weights that are not analysed (counted
    in the summary's ``skipped``), or a linear op without a constant operand (no weight)."""
    kind = "skipped weights" if skipped.holds_weights else "no weight"
    return f"{kind}: {skipped.label} ({skipped.op_type}): {skipped.reason}"


def is_checked(audits: Sequence[ModelAudit]) -> bool:
    """True when any model carries an ``audit --validate`` W1 check."""
    return any(a.validation is not None for a in audits)


def check_verdict(audit: ModelAudit) -> str:
    """The W1 check's one-line verdict (``-`` when this model was not checked)."""
    return "-" if audit.validation is None else str(audit.validation["verdict"])


def summary_table(audits: Sequence[ModelAudit]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Table 1's headers and a row per model; a ``W1 check`` column when --validate ran."""
    cells = [summary_cells(a, label) for a, label in zip(audits, model_labels(audits),
                                                         strict=True)]
    if not is_checked(audits):
        return SUMMARY_HEADERS, cells
    return (*SUMMARY_HEADERS, "W1 check"), [(*row, check_verdict(a))
                                             for a, row in zip(audits, cells, strict=True)]


LAYER_HEADERS = ("#", "node", "op", "q", "p", "groups", "rank", "nullity", "nu", "mu",
                 "sigma_max", "tol", "margin", "method")


BOUND_DIGITS = 2  # an upper or lower bound (resolved digits 0) is shown with 2 digits


def layer_cells(row: LayerRow) -> tuple[str, ...]:
    """One layer row as text cells (headers: LAYER_HEADERS): sigma_max and the margin with 4
    significant digits, tol with 3, each at most the digits its error estimate resolves,
    trailing zeros kept (``2.410``, ``4.00e+03``), a bound with BOUND_DIGITS (``>=74``);
    unclear margins get a ``!``."""
    shown = row.decision.resolved()

    def cell(name: str, digits: int) -> str:
        value, resolved_digits = shown[name]
        if value is None:
            return "-"
        return digits_text(value, min(digits, resolved_digits) if resolved_digits else
                           BOUND_DIGITS)

    at_least = ">=" if shown["margin"][1] == 0 else ""  # a lower bound (see resolved())
    margin = at_least + cell("margin", 4) + ("" if row.clear else " !")
    return (
        str(row.index), nodes_label(row), row.layer.op, str(row.layer.q), str(row.layer.p),
        str(row.layer.groups), str(row.rank), str(row.nullity), "x" if row.nu else "",
        "x" if row.mu else "", cell("sigma_max", 4), cell("tol", 3), margin,
        row.decision.method,
    )


def first_layer_lines(audit: ModelAudit) -> list[str]:
    """W1 in a few plain sentences: which op, the path to it, its class and blind elements."""
    first = audit.first_layer
    if first is None:
        return ["W1: the model has no graph input."]
    shape = "x".join("?" if d is None else str(d) for d in first.input_shape or ())
    if first.node is None:
        found = (f"W1: none reached from input '{first.input}' in the main graph (see the "
                 "note)")
    else:
        path = " -> ".join([first.input, *[s.op for s in first.path], first.node])
        found = f"W1: {first.node} (row {first.row_index}), reached by {path}"
    lines = [found,
             f"    input '{first.input}' {first.input_dtype} [{shape}]",
             f"    class: {first.exactness}: {first.reason}"]
    lines.append(f"    blind input elements{_blind_text(first)}")
    return lines


def _blind_text(first: FirstLayer) -> str:
    """The blind-element count, or why there is none."""
    if first.blind_elements is not None:
        return (f" (no window reads them): {first.blind_elements} of {first.input_elements} "
                "per sample")
    if first.exactness == NOT_APPLICABLE:
        return ": not counted (W1's class is not applicable)"
    if first.input_shape is None or any(d is None for d in first.input_shape):
        return ": unknown (dynamic input size; pass --input-shape)"
    if (first.input_elements or 0) > MAX_COUNTED_ELEMENTS:
        return (f": unknown (over {MAX_COUNTED_ELEMENTS:,} elements per sample, too many to "
                "count one by one)")
    return ": unknown (the path to W1 cannot be followed element by element)"
