"""onnxcollide: audit ONNX models for exact feature collisions (Ozbulak et al.).

The public Python API, importable from here (each loads its stage on first use, so
``import onnxcollide`` stays cheap and needs no ONNX Runtime):

- ``audit_model(path, AuditSettings(...)) -> ModelAudit``: every weight's rank and nullity
  (``LayerRow``), the paper's Table 1 (``ModelMetrics``) and W1 with its class (``FirstLayer``).
- ``load_inputs(...)``/``read_inputs(...)`` and ``find_collisions(path, feeds,
  SearchSettings(...)) -> CollisionSet``: the Null-space search on the real input space.
- ``validate_collisions(found, device, precision, seed)``: each colliding input run in ONNX
  Runtime against the original (needs ``onnxcollide[cpu]`` or ``onnxcollide[gpu]``).
- ``load_policy(path)``, ``facts_of_audit(audit)`` and ``evaluate(policy, [(path, facts)])
  -> CheckResult`` (``Finding``s and the exit code): the rules of ``onnxcollide check``.
- ``compare_models(paths, CompareSettings(...)) -> Comparison``: several exports of one
  network aligned layer by layer, their weights related (``onnxcollide compare``).
- ``ToleranceRule``, ``ConvConvention``; errors derive from ``OnnxCollideError``.

See docs/api.md for a worked example.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from onnxcollide._version import __version__

if TYPE_CHECKING:
    from onnxcollide.audit.layers import ConvConvention
    from onnxcollide.audit.model import (
        AuditSettings,
        FirstLayer,
        LayerRow,
        ModelAudit,
        ModelMetrics,
        audit_model,
    )
    from onnxcollide.collide.inputs import ImageOptions, load_inputs, read_inputs
    from onnxcollide.collide.results import Collision, CollisionSet, SearchSettings
    from onnxcollide.collide.search import find_collisions
    from onnxcollide.compare.model import compare_models
    from onnxcollide.compare.results import CompareSettings, Comparison
    from onnxcollide.errors import (
        ModelLoadError,
        OnnxCollideError,
        UnsupportedModelError,
        UsageError,
    )
    from onnxcollide.graph.load import load_model
    from onnxcollide.linalg.spectral import ToleranceRule
    from onnxcollide.policy.config import load_policy
    from onnxcollide.policy.evaluate import CheckResult, Finding, evaluate
    from onnxcollide.policy.facts import facts_of_audit
    from onnxcollide.runtime.collisions import validate_collisions

_PUBLIC = {
    "ConvConvention": "onnxcollide.audit.layers",
    "AuditSettings": "onnxcollide.audit.model",
    "FirstLayer": "onnxcollide.audit.model",
    "LayerRow": "onnxcollide.audit.model",
    "ModelAudit": "onnxcollide.audit.model",
    "ModelMetrics": "onnxcollide.audit.model",
    "audit_model": "onnxcollide.audit.model",
    "ImageOptions": "onnxcollide.collide.inputs",
    "load_inputs": "onnxcollide.collide.inputs",
    "read_inputs": "onnxcollide.collide.inputs",
    "Collision": "onnxcollide.collide.results",
    "CollisionSet": "onnxcollide.collide.results",
    "SearchSettings": "onnxcollide.collide.results",
    "find_collisions": "onnxcollide.collide.search",
    "compare_models": "onnxcollide.compare.model",
    "CompareSettings": "onnxcollide.compare.results",
    "Comparison": "onnxcollide.compare.results",
    "ModelLoadError": "onnxcollide.errors",
    "OnnxCollideError": "onnxcollide.errors",
    "UnsupportedModelError": "onnxcollide.errors",
    "UsageError": "onnxcollide.errors",
    "load_model": "onnxcollide.graph.load",
    "ToleranceRule": "onnxcollide.linalg.spectral",
    "validate_collisions": "onnxcollide.runtime.collisions",
    "load_policy": "onnxcollide.policy.config",
    "CheckResult": "onnxcollide.policy.evaluate",
    "Finding": "onnxcollide.policy.evaluate",
    "evaluate": "onnxcollide.policy.evaluate",
    "facts_of_audit": "onnxcollide.policy.facts",
}

__all__ = [
    "AuditSettings",
    "CheckResult",
    "Collision",
    "CollisionSet",
    "CompareSettings",
    "Comparison",
    "ConvConvention",
    "Finding",
    "FirstLayer",
    "ImageOptions",
    "LayerRow",
    "ModelAudit",
    "ModelLoadError",
    "ModelMetrics",
    "OnnxCollideError",
    "SearchSettings",
    "ToleranceRule",
    "UnsupportedModelError",
    "UsageError",
    "__version__",
    "audit_model",
    "compare_models",
    "evaluate",
    "facts_of_audit",
    "find_collisions",
    "load_inputs",
    "load_model",
    "load_policy",
    "read_inputs",
    "validate_collisions",
]


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxcollide' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
