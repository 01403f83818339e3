"""Model inputs from files (.npy, .npz, PNG/JPEG images) or seeded random draws."""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxcollide.collide.results import ChannelRange
from onnxcollide.errors import ModelLoadError, UnsupportedModelError, UsageError
from onnxcollide.graph.load import LoadedModel
from onnxcollide.graph.shapes import declared_dims, model_inputs
from onnxcollide.graph.tensors import dtype_name, numpy_dtype
from onnxcollide.limits import check_allocation

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # Pillow modes of one-channel images


def is_image(path: str) -> bool:
    """Whether an input file is read as an image (by its suffix: PNG, JPEG, ...)."""
    return path.lower().endswith(IMAGE_SUFFIXES)


@dataclass(frozen=True)
class ImageOptions:
    """How an image file becomes a tensor.

    Attributes:
        size: (height, width) to resize to; None: the model's fixed spatial size, else as is.
        layout: ``auto`` (from the model's input shape), ``nchw`` or ``nhwc``.
        scale: multiply the 0..255 pixel values by this (default 1/255: values in [0, 1]).
        mean, std: per-channel normalisation after scaling, ``(x - mean) / std``.
    """

    size: tuple[int, int] | None = None
    layout: str = "auto"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def parse_assignments(texts: Sequence[str], option: str) -> dict[str | None, str]:
    """``name=value`` (or a bare value for the only input) -> {name or None: value}."""
    out: dict[str | None, str] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if sep and name and not os.path.exists(text):
            if name in out:
                raise UsageError(f"{option} gives input '{name}' twice",
                                 hint=f"give one {option} per input")
            out[name] = value
        else:
            out[None] = text
    if None in out and len(texts) > 1:
        raise UsageError(f"{option} without a NAME= prefix is only allowed once",
                         hint=f"write {option} NAME=VALUE for each input")
    return out


def _declared(value_info: Any, path: str) -> tuple[list[int | None], np.dtype]:
    """The dims and numpy dtype a model input declares (``value_info``: its ValueInfoProto).

    Raises:
        UnsupportedModelError: the input is not a tensor (a sequence, a map, no type), or its
            element type is one no array holds (0, undefined, as a corrupt byte leaves it).
    """
    name, kind = value_info.name, value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        raise UnsupportedModelError(f"the input '{name}' is not a tensor ({kind or 'no type'})",
                                    path, "only tensor inputs can be fed from arrays")
    elem_type = value_info.type.tensor_type.elem_type
    try:
        dtype = numpy_dtype(elem_type)
    except (KeyError, ValueError, TypeError):
        raise UnsupportedModelError(f"the input '{name}' declares the element type "
                                    f"{dtype_name(elem_type)}, which no array holds", path,
                                    "the model is corrupt: re-export it") from None
    return list(declared_dims(value_info.type) or ()), dtype


def _load_array(path: str, name: str) -> tuple[np.ndarray, str | None]:
    """The array of a .npy file, or the one of a .npz named like the input (else its only
    one), and the .npz key it was read from (None for a .npy). Its size is checked against
    the memory limit before it is read (a .npy's data is the file; a .npz member's size is
    in the archive's directory)."""
    check_allocation(os.path.getsize(path), "the array file's data", path,
                     remedy=SMALLER_FILE)
    with open(path, "rb") as handle:  # closed whatever numpy raises
        try:
            loaded = np.load(handle, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                return loaded, None
            key = _npz_key(loaded, name, path)
            return np.asarray(loaded[key]), key
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            # numpy's own message advises allow_pickle for anything it cannot parse (a text
            # file, a pickle, an object array): never suggest loading pickles from an
            # untrusted file.
            raise ModelLoadError("cannot read the array file: it is not a .npy or .npz file "
                                 "of numbers that numpy reads without pickles", path,
                                 "save the array with numpy.save or numpy.savez") from exc


def _npz_key(archive: Any, name: str, path: str) -> str:
    """The member of an open .npz read for input ``name``: its own name, else the only one;
    checked against the memory limit by its uncompressed size.

    Raises:
        UsageError: several members, none named ``name``.
    """
    keys = list(archive.keys())
    if name not in keys and len(keys) != 1:
        raise UsageError(f"the .npz holds {keys}, none named '{name}'", path,
                         f"save the array under the key '{name}'")
    key = name if name in keys else keys[0]
    stored = {n.removesuffix(".npy"): n for n in archive.zip.namelist()}  # numpy's keys
    member = archive.zip.getinfo(stored[key])
    check_allocation(member.file_size, f"the array '{key}' of the .npz", path,
                     remedy=SMALLER_FILE)
    return key


def check_input_file(path: str) -> None:
    """A file an input is read from exists, is a regular file (a FIFO would block, a device
    never end) and can be read.

    Raises:
        UsageError: an empty path.
        ModelLoadError: which of these it is not, and what to do.
    """
    if not path:
        raise UsageError("an input file's path is empty", hint="give the .npy, .npz or "
                         "image file")
    if not os.path.exists(path):
        raise ModelLoadError("file not found", path, "check the path")
    if os.path.isdir(path):
        raise ModelLoadError("is a folder, not an array or image file", path,
                             "give a .npy, .npz or image file")
    if not os.path.isfile(path):
        raise ModelLoadError("is not a regular file (a pipe or a device)", path,
                             "save the array or image to a file and give that")
    if not os.access(path, os.R_OK):
        raise ModelLoadError("cannot be read: permission denied", path,
                             "make the file readable for this user")


def _load_image(path: str, dims: list[int | None], options: ImageOptions
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """The image as a (1, C, H, W) or (1, H, W, C) float64 tensor, and how it was made (see
    ``read_inputs``)."""
    from PIL import Image, UnidentifiedImageError

    layout = options.layout
    if layout == "auto":
        layout = "nhwc" if len(dims) == 4 and dims[-1] in (1, 3, 4) and dims[1] not in (1, 3, 4) \
            else "nchw"
    channels = dims[1] if layout == "nchw" and len(dims) == 4 else dims[-1] if len(dims) == 4 \
        else 3
    spatial = (dims[2], dims[3]) if layout == "nchw" and len(dims) == 4 else \
        (dims[1], dims[2]) if len(dims) == 4 else (None, None)
    mode = "L" if channels == 1 else "RGB"
    _check_resize(options.size, spatial, channels, path)
    try:
        with _pillow_pixel_limit_off(Image), Image.open(path) as opened:
            native, native_mode = (opened.height, opened.width), str(opened.mode)
            size = options.size or (spatial if None not in spatial else None)
            made = tuple(size) if size is not None else native
            check_allocation(native[0] * native[1] * len(opened.getbands()) * 4,
                             f"the decoded image ({native[1]}x{native[0]})", path,
                             remedy=SMALLER_FILE)
            check_allocation(made[0] * made[1] * len(mode) * 8,  # type: ignore[operator]
                             f"the image's values ({made[1]}x{made[0]}) in float64", path,
                             remedy=SMALLER_FILE)
            image = opened if opened.mode == mode else opened.convert(mode)
            if made != native:
                height, width = (int(d) for d in made)  # type: ignore[arg-type]
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float64)
    except (OSError, UnidentifiedImageError) as exc:
        raise ModelLoadError(f"cannot read the image ({exc})", path) from exc
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1) * options.scale
    if options.mean is not None:
        pixels = pixels - _per_channel(options.mean, "--mean", mode, path)
    if options.std is not None:
        pixels = pixels / _per_channel(options.std, "--std", mode, path)
    tensor = pixels[None]  # (1, H, W, C)
    record = _image_record(path, (native, native_mode), tuple(pixels.shape[:2]), mode, layout,
                           options)
    return (tensor if layout == "nhwc" else tensor.transpose(0, 3, 1, 2)), record


SMALLER_FILE = "give a smaller array or image"


@contextmanager
def _pillow_pixel_limit_off(image_module: Any) -> Iterator[None]:
    """Pillow's decompression-bomb limit off for a block (it warns above 89M pixels and
    refuses above 179M, whatever --max-memory says): the memory limit decides instead, from
    the image's size, before any pixel is decoded."""
    saved = image_module.MAX_IMAGE_PIXELS
    image_module.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        image_module.MAX_IMAGE_PIXELS = saved


def _check_resize(size: tuple[int, int] | None, spatial: tuple[int | None, int | None],
                  channels: int | None, path: str) -> None:
    """``--resize HxW`` fits the model's fixed height and width (where it fixes them) and
    the memory limit, checked before any pixel is resized.

    Raises:
        UsageError: another size than the model's, or one over the memory limit.
    """
    if size is None:
        return
    fixed = [(given, wanted) for given, wanted in zip(size, spatial, strict=True)
             if wanted is not None]
    if any(given != wanted for given, wanted in fixed):
        shown = "x".join("?" if d is None else str(d) for d in spatial)
        raise UsageError(f"--resize {size[0]}x{size[1]} does not fit the model, whose images "
                         f"are {shown} (height x width)", path,
                         f"drop --resize, or give --resize {shown.replace('?', '224')}")
    check_allocation(size[0] * size[1] * (channels or 3) * 8, f"the image resized to "
                     f"{size[0]}x{size[1]} in float64", path, option="--resize")


def _image_record(path: str, native: tuple[tuple[int, int], str], made: tuple[int, ...],
                  mode: str, layout: str, options: ImageOptions) -> dict[str, Any]:
    """How an image file became a tensor (``native``: the file's (height, width) and Pillow
    mode); a ``notice`` where it was resized without --resize (a different aspect ratio, or
    a model that expects another size, changes the input)."""
    (height, width), native_mode = native
    resized = made != (height, width)
    record: dict[str, Any] = {
        "source": "image", "path": path, "sha256": _sha256(path),
        "image_size": [height, width], "image_mode": native_mode,
        "resized_to": list(made) if resized else None,
        "resample": "bilinear" if resized else None, "mode": mode, "layout": layout,
        "scale": options.scale, "mean": list(options.mean) if options.mean else None,
        "std": list(options.std) if options.std else None,
    }
    notices = []
    if resized and options.size is None:
        notices.append(f"{path} is {height}x{width}; it was resized (bilinear) to the model's "
                       f"{made[0]}x{made[1]}: pass --resize HxW to choose, or give an image "
                       "of that size")
    grey = native_mode in GREY_MODES
    if grey != (mode == "L"):
        what = "grey, 1 channel" if grey else "colour"
        notices.append(f"{path} is a {what} image ({native_mode}); it was converted to {mode} "
                       f"for the model's {len(mode)}-channel input")
    if "A" in native_mode:
        notices.append(f"{path} has an alpha channel; it was dropped ({native_mode} -> {mode})")
    if notices:
        record["notice"] = "; ".join(notices)
    return record


def file_record(path: str, key: str | None, array: np.ndarray | None = None
                ) -> dict[str, Any]:
    """How a value was read from a file: its path (as given), SHA-256, the .npz key (None for a
    .npy) and, where given, the array's shape and dtype as stored."""
    record: dict[str, Any] = {"source": "file", "path": path, "sha256": _sha256(path),
                              "key": key}
    if array is not None:
        record.update(shape=list(array.shape), dtype=str(array.dtype))
    return record


def image_channel_range(record: dict[str, Any], bounds: tuple[float, float],
                        value: np.ndarray) -> ChannelRange:
    """A range in an image's units (pixel value x --scale, before --mean/--std) mapped into
    the model's units, per channel: ``(bound - mean_c) / std_c``, rounded to the input's
    dtype as the image's own values are (an image pixel at a bound stays inside).

    Args:
        record: the image's record from ``read_inputs`` (mode, layout, mean, std).
        bounds: (lo, hi) in image units.
        value: the input as fed, (1, C, H, W) or (1, H, W, C).
    """
    channels = len(record["mode"])
    mean = np.broadcast_to(np.asarray(record["mean"] or [0.0], np.float64), (channels,))
    std = np.broadcast_to(np.asarray(record["std"] or [1.0], np.float64), (channels,))
    dtype = value.dtype if value.dtype.kind == "f" else np.dtype(np.float64)
    low = ((bounds[0] - mean) / std).astype(dtype).astype(np.float64)
    high = ((bounds[1] - mean) / std).astype(dtype).astype(np.float64)
    axis = 1 if record["layout"] == "nchw" else value.ndim - 1
    return ChannelRange(axis, tuple(float(v) for v in low), tuple(float(v) for v in high))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _per_channel(values: tuple[float, ...], option: str, mode: str, path: str
                 ) -> np.ndarray:
    """``values`` as a float64 array: one per channel the model's input takes (or one for
    all); ``mode``: what the image was converted to for it (``L``: 1 channel, ``RGB``: 3).

    Raises:
        UsageError: another number of values than the model's input has channels.
    """
    channels = len(mode)
    if len(values) not in (1, channels):
        shown = ",".join(f"{v:g}" for v in values)
        taken = "1 channel (the image is read as grey)" if channels == 1 else \
            f"{channels} channels (the image is read as {mode})"
        raise UsageError(f"{option} '{shown}' has {len(values)} values; the model's input "
                         f"takes {taken}", path,
                         f"give {option} one value per channel ({channels}) or one for all")
    return np.asarray(values, dtype=np.float64)


def _check_values(array: np.ndarray, dtype: np.dtype, name: str, source: str) -> np.ndarray:
    """``array`` cast to the input's ``dtype``, refusing what the cast would change silently.

    Raises:
        UsageError: not real numbers (complex, text), NaN or infinite values, values beyond
            the range of ``dtype``, or fractions for an integer input.
    """
    if array.dtype.kind not in "biuf" and array.dtype.kind != dtype.kind:
        raise UsageError(f"holds {array.dtype} values; input '{name}' takes real numbers "
                         f"({dtype})", source, "save a real (float or integer) array")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise UsageError(f"holds NaN or infinite values for input '{name}'", source,
                         "give finite values")
    bounds = _integer_bounds(dtype)
    if bounds is not None and array.size and array.dtype.kind in "biuf":
        _check_integers(array, dtype, bounds, name, source)
    cast = _finite_cast(array, dtype)
    if cast is None:
        raise UsageError(f"holds values beyond the range of {dtype} for input '{name}'",
                         source, "rescale the values")
    return cast


def _finite_cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    """``array`` cast to ``dtype``; None where a float result overflows to inf (or is NaN)."""
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(dtype, copy=False)
    return None if cast.dtype.kind == "f" and not np.all(np.isfinite(cast)) else cast


def _integer_bounds(dtype: np.dtype) -> tuple[int, int] | None:
    """The smallest and largest value of an integer input's dtype (bool: 0 and 1; int4 and
    uint4, which numpy knows through ml_dtypes, by ml_dtypes' own iinfo); None for others."""
    if dtype.kind == "b":
        return 0, 1
    if dtype.kind in "iu":
        return int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    if dtype.kind == "V" and dtype.name.startswith(("int", "uint")):
        import ml_dtypes

        return int(ml_dtypes.iinfo(dtype).min), int(ml_dtypes.iinfo(dtype).max)
    return None


def _check_integers(array: np.ndarray, dtype: np.dtype, bounds: tuple[int, int], name: str,
                    source: str) -> None:
    """Refuse fractions and values outside ``bounds`` for an integer (or bool) input.

    Raises:
        UsageError: a value that the cast to ``dtype`` would round or wrap around.
    """
    if array.dtype.kind == "f" and np.any(array != np.round(array)):
        raise UsageError(f"holds fractions; input '{name}' takes {dtype}", source,
                         f"save integer values for '{name}'")
    low, high = bounds
    if array.min() < low or array.max() > high:
        raise UsageError(f"holds values outside [{low}, {high}] for input '{name}' "
                         f"({dtype})", source, "save values that fit the input's type")


def check_shape(array: np.ndarray, dims: list[int | None], name: str, source: str) -> None:
    """The array fits the input's declared dims (None: any size) and holds a value.

    Raises:
        UsageError: another rank or size, or an empty array (a batch of 0 samples).
    """
    if dims and (array.ndim != len(dims) or any(
            d is not None and d != s for d, s in zip(dims, array.shape, strict=False))):
        shown = "x".join("?" if d is None else str(d) for d in dims)
        raise UsageError(f"input '{name}' has shape {_shape_text(array.shape)}, the model "
                         f"expects {shown}", source)
    if array.size == 0 and 0 not in dims:  # a dim the model fixes at 0 takes no value
        raise UsageError(f"input '{name}' has shape {_shape_text(array.shape)}: it holds no "
                         "value", source, "give at least one sample")


def _shape_text(shape: tuple[int, ...]) -> str:
    """``1x3x224x224``; ``()`` for a scalar."""
    return "x".join(map(str, shape)) if shape else "() (a scalar)"


def random_input(dims: list[int | None], override: tuple[int, ...] | None, dtype: np.dtype,
                 name: str, rng: np.random.Generator,
                 value_range: tuple[float, float] = (0.0, 1.0), source: str = "") -> np.ndarray:
    """A seeded uniform draw in ``value_range`` for a float input (batch 1 where dynamic).

    ``source`` (the model file) is named in errors.
    """
    shape = override if override is not None else tuple(
        1 if k == 0 and d is None else d for k, d in enumerate(dims))
    if any(d is None for d in shape):
        example = "x".join(str(d if d is not None else 1 if k == 0 else 224)
                           for k, d in enumerate(dims))
        shown = "x".join("?" if d is None else str(d) for d in shape)
        raise UsageError(f"input '{name}' has dynamic dims ({shown})", source,
                         f"pass its full shape, e.g. --input-shape {name}={example}, or give a "
                         "value with --input")
    size = math.prod(int(d) for d in shape if d is not None) * 8  # float64 draw, in bytes
    check_allocation(size, f"a random draw for input '{name}' of shape "
                     f"{'x'.join(map(str, shape))}", source,  # blame what chose the shape
                     option="--input-shape" if override is not None else None)
    if dtype.kind != "f":
        raise UsageError(f"input '{name}' is {dtype} (not float): a random draw is not "
                         "meaningful", source, f"give a value with --input {name}=FILE.npy")
    lo, hi = value_range
    with np.errstate(over="ignore", invalid="ignore"):  # hi - lo may overflow float64
        draw = _finite_cast(lo + (hi - lo) * rng.random(shape), dtype)  # type: ignore[arg-type]
    if draw is None:
        raise UsageError(f"a random draw in [{lo:g}, {hi:g}) does not fit input '{name}' "
                         f"({dtype})",
                         hint=f"give --range bounds within +-{float(np.finfo(dtype).max):g}")
    return draw


def _check_conflicts(files: dict[str | None, str], shapes: dict[str, tuple[int, ...]],
                     image: ImageOptions, option: str, path: str) -> None:
    """Options that would be ignored are usage errors: a shape for an input that a file gives,
    image options where no input is an image.

    Raises:
        UsageError: names the options and the input.
    """
    both = sorted(n for n in files if n is not None and n in shapes)
    if both:
        raise UsageError(f"--input-shape and {option} both give input '{both[0]}'", path,
                         "the file's shape is used: drop --input-shape for that input")
    check_image_options(image, list(files.values()), path)


def check_image_options(image: ImageOptions, sources: Sequence[str], path: str) -> None:
    """Image options where none of ``sources`` is an image would be ignored: refuse them.

    Raises:
        UsageError: names the options given.
    """
    if image != ImageOptions() and not any(is_image(f) for f in sources):
        given = [flag for flag, value, default in (
            ("--resize", image.size, None), ("--layout", image.layout, "auto"),
            ("--scale", image.scale, 1.0 / 255.0), ("--mean", image.mean, None),
            ("--std", image.std, None)) if value != default]
        named = ", ".join(given)
        verb = "applies" if len(given) == 1 else "apply"
        raise UsageError(f"{named} {verb} to image inputs (PNG/JPEG), and no input is an "
                         "image", path, f"drop {named}, or give an image file")


def load_inputs(model: LoadedModel, files: dict[str | None, str],
                shapes: dict[str, tuple[int, ...]], seed: int, image: ImageOptions,
                value_range: tuple[float, float] | None = None,
                option: str = "--input", precision: str = "float32") -> dict[str, np.ndarray]:
    """A value for every graph input (``read_inputs`` without the records)."""
    return read_inputs(model, files, shapes, seed, image, value_range, option, precision)[0]


def read_inputs(model: LoadedModel, files: dict[str | None, str],
                shapes: dict[str, tuple[int, ...]], seed: int, image: ImageOptions,
                value_range: tuple[float, float] | None = None,
                option: str = "--input", precision: str = "float32"
                ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """A value for every graph input: from a file where given, else a seeded random draw;
    and, per input, how its value was made, for reports.

    ``option`` is how the command takes a file (``--input``, or validate's ``FIRST``), for
    the hint of a model with several inputs. With ``precision="float64"`` (a run of the
    model's float64 copy) float inputs from files keep float64 values instead of being
    rounded to the input's declared type, so a float64 collision saved by ``collide`` is fed
    as it was proven.

    Returns:
        (feeds, records): feeds {input name: array in the input's dtype}; records {input
        name: {"source": "random", "seed", "range", "shape", "dtype"} (draws are taken from
        one generator seeded with ``seed``, in the model's input order), {"source": "file",
        "path", "sha256", "key" (the .npz entry read; None for .npy), "shape", "dtype" (as
        stored), plus a "notice" where it was fed in another dtype}, or {"source": "image",
        "path", "sha256", "image_size", "image_mode" (the file's Pillow mode, e.g. RGBA,
        whose alpha is dropped), "resized_to", "resample",
        "mode" (converted to: RGB or L), "layout", "scale", "mean", "std", plus a "notice"
        for an image resized without --resize}}. Paths are as given.

    Raises:
        UsageError: a name the model lacks, a shape or dtype that does not fit.
        ModelLoadError: a file that cannot be read.
    """
    inputs = model_inputs(model)
    names = [i.name for i in inputs]
    if None in files:
        if len(inputs) != 1:
            how = "name each: --input NAME=FILE" if option == "--input" else \
                f"write {option} as NAME=FILE"
            raise UsageError("the model has several inputs", model.path,
                             f"{how} (inputs: {', '.join(names)})")
        files = {names[0]: files[None]}
    _check_conflicts(files, shapes, image, option, model.path)
    for name in list(files) + list(shapes):
        if name not in names:
            raise UsageError(f"the model has no input '{name}'", model.path,
                             f"its inputs are: {', '.join(names)}")
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    records: dict[str, dict[str, Any]] = {}
    for info in inputs:
        dims, dtype = _declared(info, model.path)
        source = files.get(info.name)
        if source is not None and dtype.kind in "Oc":
            raise UnsupportedModelError(
                f"the input '{info.name}' takes {dtype_name(info.type.tensor_type.elem_type)} "
                "values, which no file of real numbers can give", model.path,
                "only inputs of real numbers (float, integer, bool) are fed from files")
        if source is None:
            draw_range = value_range or (0.0, 1.0)
            feeds[info.name] = random_input(dims, shapes.get(info.name), dtype, info.name, rng,
                                            draw_range, model.path)
            records[info.name] = {"source": "random", "seed": seed, "range": list(draw_range),
                                  "shape": list(feeds[info.name].shape), "dtype": str(dtype)}
            continue
        check_input_file(source)
        if is_image(source):
            array, records[info.name] = _load_image(source, dims, image)
        else:
            array, key = _load_array(source, info.name)
            records[info.name] = file_record(source, key, array)
        check_shape(array, dims, info.name, source)
        wide = precision == "float64" and dtype.kind == "f" and array.dtype.kind in "fiu"
        feeds[info.name] = _check_values(array, np.dtype(np.float64) if wide else dtype,
                                         info.name, source)
        if records[info.name]["source"] == "file" and not wide:  # wide: float64, on purpose
            _note_conversion(records[info.name], array, feeds[info.name], info.name)
    return feeds, records


def _note_conversion(record: dict[str, Any], stored: np.ndarray, fed: np.ndarray,
                     name: str) -> None:
    """A ``notice`` on a file's record where its values were fed in another dtype than
    stored (float64 into a float32 input, integers into a float one): whether the values
    came through exactly, else the largest change the conversion made."""
    if stored.dtype == fed.dtype:
        return
    change = float(np.max(np.abs(fed.astype(np.float64) - stored.astype(np.float64)))) \
        if stored.size else 0.0
    how = "exactly" if change == 0 else f"rounding values by up to {change:.3g}"
    record["notice"] = (f"{record['path']} holds {stored.dtype}; converted to {fed.dtype} "
                        f"(the type of input '{name}'), {how}")
