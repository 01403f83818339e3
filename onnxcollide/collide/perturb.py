"""One colliding input from per-unit directions: beta per unit, the valid range, rounding."""

from __future__ import annotations

import math

import numpy as np

from onnxcollide.collide.results import Collision, SearchSettings
from onnxcollide.errors import UnsupportedModelError, UsageError

Bounds = tuple[np.ndarray, np.ndarray]  # (low, high), each broadcasting against the input


def range_bounds(settings: SearchSettings, ndim: int) -> Bounds | None:
    """The valid range in the model's units as (low, high) arrays that broadcast against an
    input of ``ndim`` dims (per channel for an image range), or None without a range."""
    if settings.channel_range is not None:
        return settings.channel_range.arrays(ndim)
    if settings.valid_range is None:
        return None
    return np.asarray(settings.valid_range[0]), np.asarray(settings.valid_range[1])


def range_text(settings: SearchSettings) -> str:
    """The range as the user gave it, with its units: ``[0, 1]`` or ``[0, 1] (image units,
    per channel in model units: [-2.12, 2.25], ...)``."""
    if settings.valid_range is None:
        return "no range"
    lo, hi = settings.valid_range
    text = f"[{lo:g}, {hi:g}]"
    mapped = settings.channel_range
    if mapped is not None and (set(mapped.low) != {lo} or set(mapped.high) != {hi}):
        pairs = ", ".join(f"[{a:.4g}, {b:.4g}]" for a, b in zip(mapped.low, mapped.high,
                                                                strict=True))
        text += f" (image units; per channel in the model's units: {pairs})"
    return text


def inside(value: np.ndarray, bounds: Bounds | None, strictly: bool = False) -> np.ndarray:
    """Elementwise: ``value`` inside the bounds (all True without bounds)."""
    if bounds is None:
        return np.ones(value.shape, dtype=bool)
    lo, hi = bounds
    if strictly:
        return np.asarray((value > lo) & (value < hi))
    return np.asarray((value >= lo) & (value <= hi))


def _element_limits(x: np.ndarray, step: np.ndarray, bounds: Bounds) -> np.ndarray:
    """Per element, the largest t >= 0 with lo <= x + t * step <= hi (inf where step is 0)."""
    x64 = x.astype(np.float64)
    lo, hi = (np.broadcast_to(b, x.shape).astype(np.float64) for b in bounds)
    limits = np.full(x.shape, np.inf)
    up, down = step > 0, step < 0
    limits[up] = (hi[up] - x64[up]) / step[up]
    limits[down] = (x64[down] - lo[down]) / -step[down]
    return limits


def _unit_betas(x: np.ndarray, unit_delta: np.ndarray, unit_of: np.ndarray | None,
                settings: SearchSettings) -> np.ndarray:
    """Per input element, the beta of the unit it belongs to (bounded by the valid range).

    Each unit gets the largest |beta_u| <= |beta| that keeps its own elements inside the range
    (the paper's individual multipliers beta_i); without units, one beta for the whole input.
    """
    beta = settings.beta
    bounds = range_bounds(settings, x.ndim)
    if bounds is None:
        return np.full(x.shape, beta)
    sign = math.copysign(1.0, beta)
    limits = _element_limits(x, unit_delta * sign, bounds)
    if unit_of is None:
        return np.full(x.shape, sign * min(abs(beta), float(limits.min())))
    owners = unit_of.reshape(-1)
    per_unit = np.full(int(owners.max(initial=-1)) + 1, abs(beta))
    has = owners >= 0
    np.minimum.at(per_unit, owners[has], limits.reshape(-1)[has])
    out = np.full(x.size, sign * abs(beta))
    out[has] = sign * per_unit[owners[has]]
    return out.reshape(x.shape)


def in_range(value: np.ndarray, settings: SearchSettings) -> bool:
    """Whether every element of ``value`` is inside the settings' valid range (if any)."""
    return bool(np.all(inside(value, range_bounds(settings, value.ndim))))


def _moved(x: np.ndarray, betas: np.ndarray, unit_delta: np.ndarray, k: int,
           beta: float) -> np.ndarray:
    """``x + betas * unit_delta`` in x's dtype.

    Raises:
        UsageError: the result overflows the dtype (beta far too large).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        value = (x.astype(np.float64) + betas * unit_delta).astype(x.dtype)
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise UsageError(f"beta {beta:g} makes colliding input {k} overflow {x.dtype}",
                         hint="use a smaller --beta")
    return value


def _unchanged_error(k: int, x: np.ndarray, betas: np.ndarray,
                     settings: SearchSettings) -> UsageError:
    """Why colliding input ``k`` came out equal to the input: --range bounded every unit's
    beta to 0, or beta is too small to change any element in the input's dtype."""
    if settings.valid_range is not None and not np.any(betas):
        return UsageError(f"colliding input {k} equals the input: every unit's beta was "
                          "bounded to 0 by --range",
                          hint="widen the range or move the input inside it")
    if settings.beta == 0:
        return UsageError(f"colliding input {k} equals the input: beta is 0",
                          hint="use a non-zero --beta")
    return UsageError(f"colliding input {k} equals the input: beta {settings.beta:g} is too "
                      f"small to change any element of the {x.dtype} input",
                      hint="use a larger --beta")


def make_collision(k: int, x: np.ndarray, unit_delta: np.ndarray, unit_of: np.ndarray | None,
                    settings: SearchSettings, basis: int | None) -> tuple[Collision, str | None]:
    betas = _unit_betas(x, unit_delta, unit_of, settings)
    moved = unit_delta != 0
    value = _moved(x, betas, unit_delta, k, settings.beta)
    for _ in range(60):  # rounding to the input dtype may cross a bound by one ulp
        if in_range(value, settings):
            break
        betas = betas * (1.0 - 2.0 ** -20)
        value = _moved(x, betas, unit_delta, k, settings.beta)
    if not in_range(value, settings):
        raise UnsupportedModelError(f"colliding input {k} cannot be kept inside the range "
                                    "after rounding to the input dtype")
    if not np.any(value != x):
        raise _unchanged_error(k, x, betas[moved], settings)
    used = np.abs(betas[moved]) if moved.any() else np.array([abs(settings.beta)])
    note = None
    if settings.valid_range and float(used.min()) < abs(settings.beta):
        spread = f"{used.min():.4g}" if float(used.min()) == float(used.max()) else \
            f"[{used.min():.4g}, {used.max():.4g}]"
        how = "per unit to" if used.size > 1 and spread.startswith("[") else "to"
        note = (f"colliding input {k}: beta {settings.beta:g} bounded {how} {spread} to stay "
                f"inside {range_text(settings)}")
    delta = value.astype(np.float64) - x.astype(np.float64)
    sign = math.copysign(1.0, settings.beta)
    return Collision(k, sign * float(used.max()), sign * float(used.min()), settings.beta,
                     delta, betas * unit_delta, value, basis), note


def check_start(x: np.ndarray, name: str, settings: SearchSettings, path: str) -> None:
    """beta and the input to perturb must be finite, and --range must fit its dtype.

    Raises:
        UsageError: a NaN or infinite beta or input value (no perturbation could be
            measured), or a range bound beyond the largest value of the input's float dtype.
    """
    if not math.isfinite(settings.beta):
        raise UsageError(f"beta {settings.beta} is not a finite number",
                         hint="give a finite --beta")
    if x.dtype.kind != "f":
        return
    if not np.all(np.isfinite(x)):
        raise UsageError(f"the input '{name}' holds NaN or infinite values", path,
                         "give an input with finite values")
    bounds = range_bounds(settings, x.ndim)
    if bounds is not None:
        largest = float(np.finfo(x.dtype).max)
        if max(float(np.abs(bounds[0]).max()), float(np.abs(bounds[1]).max())) > largest:
            raise UsageError(f"--range {range_text(settings)} goes beyond the range of "
                             f"{x.dtype}", path, f"give bounds within +-{largest:g}")
