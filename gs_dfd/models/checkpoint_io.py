"""Reading checkpoints and weights files without running code, and the network one records.

Predict, fit and train all load models from here (predict never imports the training code). Every file is read
with ``torch.load(weights_only=True)`` (:func:`safe_load`): a checkpoint is data, and a pickle that names a
function (``os.system``) would run it before any check could look at it. So everything gs_dfd writes is
tensors and plain values only (:func:`to_plain`), and anything else is refused in one line.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from gs_dfd.errors import InputError
from gs_dfd.models.registry import build_model, method_names, method_of

FORMAT = "gs_dfd.train/1"
"""A training checkpoint (gs_dfd.train.checkpoint.save_checkpoint): networks, optimiser, step, config."""
WEIGHTS_FORMAT = "gs_dfd.weights/1"
"""A weights file (a run's model.pt, the shipped weights): what inference needs, in float16."""


def to_plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` as what ``torch.load(weights_only=True)`` reads back: tensors, dicts, lists, tuples, str, int,
    float, bool, None. numpy arrays become tensors, numpy scalars Python numbers, Paths strings, dataclasses
    dicts; anything else is a bug here (a file we could not load again), so it raises naming where it is."""
    import numpy as np

    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass, yet pickles as numpy's
        return obj.item()
    if obj is None or isinstance(obj, torch.Tensor):
        return obj
    for plain in (bool, int, float, str):  # subclasses (an IntEnum) would pickle as their class: make them plain
        if isinstance(obj, plain):
            return plain(obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name), f"{where}.{f.name}") for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {to_plain(k, where): to_plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"{where}: {type(obj).__name__} cannot be saved in a checkpoint (tensors and plain values only)")



_REFUSED = re.compile(r"Unsupported global: GLOBAL (\S+)")


def safe_load(path: Path, field: str, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``: never runs code from the file; every way a file can fail to
    load (a pickle naming functions or classes, numpy objects, random bytes, empty, truncated, a zip that is no
    torch file, a folder) is one-line :class:`InputError` naming the file and ``field``."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, f"is a folder, not a {what} file", field)
    if not path.is_file():
        raise InputError(path, f"{what} not found", field)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise on top of the one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _REFUSED.search(str(exc))
        if refused:
            raise InputError(path, f"holds objects other than tensors and plain values (it names {refused.group(1)}); "
                                   "gs-dfd never unpickles code, so it refuses to load it (re-save it with this "
                                   "gs_dfd)", field) from None
        raise InputError(path, f"is not a {what} file gs_dfd can read (not a torch file, or damaged)", field) from None
    except EOFError:
        raise InputError(path, f"is empty or cut short: not a complete {what} file", field) from None
    except zipfile.BadZipFile:
        raise InputError(path, f"is a damaged zip archive, not a {what} file", field) from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or type(exc).__name__})", field) from None
    except MemoryError:
        raise InputError(path, f"is not a {what} file gs_dfd can read (it asks for more memory than there is)",
                         field) from None
    except Exception as exc:  # noqa: BLE001 - RuntimeError (bad zip), KeyError (text), ValueError: all bad input
        if "central directory" in str(exc):
            raise InputError(path, f"is truncated or damaged: not a complete {what} file", field) from None
        raise InputError(path, f"is not a {what} file gs_dfd can read (not a torch file, or damaged)",
                         field) from None


def require(path: Path, ck: dict, key: str, types: type | tuple[type, ...], what: str, optional: bool = False) -> Any:
    """``ck[key]``, checked to be one of ``types``: a file with a missing or wrongly typed entry is refused in
    one line naming the entry (later code then never meets a KeyError or AttributeError)."""
    if key not in ck:
        if optional:
            return None
        raise InputError(path, f"missing: every {what} has this entry (an incomplete or foreign file)", key)
    value = ck[key]
    if optional and value is None:
        return None
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _as_tuple(types))
    if not ok:
        names = " or ".join(t.__name__ for t in _as_tuple(types))
        raise InputError(path, f"must be {names} (got {type(value).__name__})", key)
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def require_state_dict(path: Path, ck: dict, key: str, what: str) -> dict:
    """A module's ``state_dict`` entry: names to tensors, nothing else."""
    state = require(path, ck, key, dict, what)
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise InputError(path, f"entry {name!r} is {type(value).__name__}, not a tensor", key)
    return state


def load_checkpoint(path: Path, field: str = "--checkpoint") -> dict:
    """A training checkpoint or model.pt, read without running code and checked entry by entry."""
    ck = safe_load(path, field)
    if not isinstance(ck, dict) or ck.get("format") not in (FORMAT, WEIGHTS_FORMAT):
        raise InputError(path, f"not a gs_dfd checkpoint (expected format {FORMAT} or {WEIGHTS_FORMAT})", "format")
    what = f"{ck['format']} file"
    require(path, ck, "method", str, what, optional=True)
    require_state_dict(path, ck, "model", what)
    require(path, ck, "model_config", dict, what)
    if ck["format"] == FORMAT:
        step = require(path, ck, "step", int, what)
        if step < 0:
            raise InputError(path, f"must be >= 0 (got {step})", "step")
        require(path, ck, "optimizer", dict, what)
        require(path, ck, "config", dict, what, optional=True)
        require(path, ck, "train_seconds", (int, float), what, optional=True)
    else:
        require(path, ck, "meta", dict, what, optional=True)
    return ck


def model_from_checkpoint(path: Path, field: str = "--checkpoint") -> tuple[torch.nn.Module, dict]:
    """The network a checkpoint (or model.pt) records, by its ``method`` (files without one: gs-siamese);
    ``field`` is the flag that named the file, for the one-line errors."""
    ck = load_checkpoint(path, field)
    method = method_of(ck)
    if method not in method_names():
        raise InputError(path, f"unknown method {method!r} (this gs_dfd knows {', '.join(method_names())})", "method")
    try:
        model = build_model(ck["model_config"], method)
    except (TypeError, ValueError, AttributeError, AssertionError) as exc:
        first = (str(exc).splitlines() or [""])[0][:120]
        raise InputError(path, f"model settings do not fit method {method} ({first})", "model_config") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(path, f"weights do not match the model ({str(exc).splitlines()[0][:120]})", "model") from None
    model.eval()
    return model, ck
