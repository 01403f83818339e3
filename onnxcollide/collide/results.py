"""What the Null-space search is asked for and what it returns: frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxcollide.linalg.spectral import ToleranceRule

MODES = ("auto", "approximate", "tiled")


@dataclass(frozen=True)
class ChannelRange:
    """A --range in an image's units (pixel value x --scale, before --mean/--std), mapped
    into the model's units channel by channel.

    Attributes:
        axis: the channel axis of the model input (1 for NCHW, 3 for NHWC).
        low, high: per channel, the bounds in the model's units (rounded to the input's
            dtype as the image's own values are).
    """

    axis: int
    low: tuple[float, ...]
    high: tuple[float, ...]

    def arrays(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) shaped to broadcast against an input of ``ndim`` dims."""
        shape = [1] * ndim
        shape[self.axis] = len(self.low)
        return np.reshape(self.low, shape), np.reshape(self.high, shape)


@dataclass(frozen=True)
class SearchSettings:
    """Everything that decides which colliding inputs are made.

    Attributes:
        count: number of colliding inputs.
        beta: scale of each unit's unit-norm kernel vector.
        basis: kernel basis indices, cycled over colliding inputs (every unit uses the same
            index, as in the paper's Figure 1); empty for seeded random combinations.
        seed: seeds every random draw (colliding input k uses ``default_rng([seed, k])``).
        region: numpy-style slice over the input's per-sample dims (e.g. ``":,8:24,8:24"``);
            only elements inside change.
        valid_range: (lo, hi): beta is bounded so every element stays inside, never clipped;
            in the model's units unless ``channel_range`` maps it.
        mode: ``auto`` (exact where the math allows), ``approximate`` (for an overlapping conv
            without an exact collision: the strongest approximate one), ``tiled`` (the paper's
            repetition of a per-patch kernel vector).
        input_name: the float input to perturb (default: the one that reaches W1).
        rule: rank tolerance rule (as in the audit).
        channel_range: ``valid_range`` given in an image's units (pixel value x --scale) and
            mapped through its --mean/--std into the model's units, per channel.
    """

    count: int = 1
    beta: float = 1.0
    basis: tuple[int, ...] = ()
    seed: int = 0
    region: str | None = None
    valid_range: tuple[float, float] | None = None
    mode: str = "auto"
    input_name: str | None = None
    rule: ToleranceRule = field(default_factory=ToleranceRule)
    channel_range: ChannelRange | None = None


@dataclass(frozen=True)
class Collision:
    """One colliding input.

    Attributes:
        index: 0-based number of this colliding input.
        beta: the largest scale used over units (after bounding by the valid range).
        beta_min: the smallest scale used over units (equal to beta without --range).
        requested_beta: the scale asked for.
        delta: perturbation of the model input as realised in the input's dtype, float64
            (``value - x``; rounding to the dtype makes it differ from ``exact_delta``).
        exact_delta: the perturbation before rounding, float64 (for float64 validation).
        value: the colliding input, ``x + delta`` in the input's dtype.
        basis: the kernel basis index used, or None for random combinations.
        approximate: True where this input's direction is not in the exact kernel (an
            overlapping conv's near-null direction, a kernel at a tolerance above float32
            rounding); the set's ``exact`` must hold too for the input to be exact.
        relative_sigma: for an approximate direction, ``||A d|| / (sigma_max ||d||)`` of the
            operator or matrix it was drawn for (its relative singular value), else None.
    """

    index: int
    beta: float
    beta_min: float
    requested_beta: float
    delta: np.ndarray
    exact_delta: np.ndarray
    value: np.ndarray
    basis: int | None
    approximate: bool = False
    relative_sigma: float | None = None


@dataclass(frozen=True)
class CollisionSet:
    """The search's result: colliding inputs and what they rest on.

    Attributes:
        model: model path.
        input_name: the perturbed graph input.
        feeds: the original value of every graph input.
        w1_node: W1's node label; ``w1_output``: its output tensor (for validation).
        exactness: W1's class on this input shape.
        method: how directions were made, in words.
        exact: True when the colliding inputs collide exactly at W1 in exact arithmetic.
        units: number of units (rows, windows, positions) that were perturbed.
        kernel_dims: (smallest, largest) kernel dimension over perturbed units.
        tol: the rank tolerance of W1; ``tol_error`` its estimated error (reports print the
            digits it resolves).
        collisions: the colliding inputs.
        operator: conv-operator facts for an overlapping W1 (sigmas, relative, exact), or None.
        notes: anything the user should know (bounded beta, skipped units).
        settings: the settings used.
    """

    model: str
    input_name: str
    feeds: dict[str, np.ndarray]
    w1_node: str
    w1_output: str
    exactness: str
    method: str
    exact: bool
    units: int
    kernel_dims: tuple[int, int]
    tol: float
    collisions: tuple[Collision, ...]
    operator: dict[str, Any] | None
    notes: tuple[str, ...]
    settings: SearchSettings
    tol_error: float = 0.0
