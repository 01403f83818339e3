"""The audit stage: each weight as a matrix in one convention (``layers``), its rank decision,
the per-layer rows, the paper's Table 1 metrics and W1 with its class (``model``).
Frozen dataclasses; nothing here prints.
"""
