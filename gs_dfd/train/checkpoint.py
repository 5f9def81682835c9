"""Training checkpoints and the weights-only model files ``predict`` loads.

A checkpoint holds the networks, the optimiser, the step, the method (it
decides which network :func:`build_model` makes) and the resolved config:
resuming from it continues exactly (the data sampler is a pure function of
(seed, rank, step)). :func:`export_weights` keeps only what
inference needs, in float16 (halves the file; predictions change by < 1e-3).

Every file is read with ``torch.load(weights_only=True)`` (:func:`safe_load`): a checkpoint is data, and a
pickle that names a function (``os.system``) would run it before any check could look at it. So everything
written here is tensors and plain values only (:func:`to_plain`), and anything else is refused in one line.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gs_dfd.errors import InputError
from gs_dfd.models.d3net import D3Net, D3NetConfig
from gs_dfd.models.defocus_net import DefocusNet, DefocusNetConfig
from gs_dfd.models.depth_net import DepthNet, DepthNetConfig
from gs_dfd.models.mddnet import MDDNet, MDDNetConfig
from gs_dfd.utils.atomic import write_bytes_atomic

if TYPE_CHECKING:
    from gs_dfd.train.config import TrainConfig

FORMAT = "gs_dfd.train/1"
WEIGHTS_FORMAT = "gs_dfd.weights/1"
METHODS = ("gs-siamese", "dered", "d3net", "mddnet")


class SiameseDepthModel(torch.nn.Module):
    """DefocusNet and DepthNet as one module (one DDP wrapper, one state dict)."""

    def __init__(self, defocus_cfg: DefocusNetConfig | None = None, depth_cfg: DepthNetConfig | None = None) -> None:
        super().__init__()
        self.defocus = DefocusNet(defocus_cfg)
        self.depth = DepthNet(depth_cfg)

    def forward(self, images: torch.Tensor, lenses: torch.Tensor) -> dict[str, torch.Tensor]:
        """images ``[M, 3, h, w]``, lenses ``[M, 4]`` -> ``coc`` (px), ``depth`` (m), ``gate`` ``[M, 1, h, w]``."""
        coc = self.defocus(images, lenses)
        out = self.depth(images, coc, lenses)
        return {"coc": coc, **out}

    def model_config(self) -> dict:
        return {"defocus_net": self.defocus.config_dict(), "depth_net": self.depth.config_dict()}


def _section(model_config: dict, name: str, tuple_keys: tuple[str, ...]) -> dict:
    sec = dict(model_config.get(name, {}))
    for key in tuple_keys:
        if key in sec:
            sec[key] = tuple(sec[key])
    return sec


def build_model(model_config: dict, method: str = "gs-siamese") -> torch.nn.Module:
    """The network of ``method`` from a checkpoint's ``model_config`` (gs-siamese and dered share one)."""
    if method in ("gs-siamese", "dered"):
        return SiameseDepthModel(
            DefocusNetConfig(**_section(model_config, "defocus_net", ("defocus_widths", "reblur_sigmas_px"))),
            DepthNetConfig(**_section(model_config, "depth_net", ("depth_widths",))))
    if method == "d3net":
        return D3Net(D3NetConfig(**_section(model_config, "d3net", ("d3net_widths", "d3net_depth_range_m"))))
    if method == "mddnet":
        return MDDNet(MDDNetConfig(**_section(model_config, "mddnet", ("mddnet_widths", "mddnet_depth_range_m"))))
    raise ValueError(f"unknown method {method!r}")


def new_model(cfg: "TrainConfig") -> torch.nn.Module:
    """A freshly initialised network for ``cfg.method`` (seed torch first for reproducible weights)."""
    if cfg.method in ("gs-siamese", "dered"):
        return SiameseDepthModel(cfg.defocus_net, cfg.depth_net)
    if cfg.method == "d3net":
        return D3Net(cfg.d3net)
    if cfg.method == "mddnet":
        return MDDNet(cfg.mddnet)
    raise ValueError(f"unknown method {cfg.method!r}")


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


def _save(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, config: dict,
                    extra: dict[str, Any]) -> None:
    """``config`` and ``extra`` go through :func:`to_plain`, so the file loads with ``weights_only=True``."""
    config = to_plain(config, "config")
    _save(path, {"format": FORMAT, "method": config.get("method"), "step": int(step), "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "model_config": to_plain(model.model_config(), "model_config"),
                 "config": config, **to_plain(extra, "extra")})


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


# Training settings that leave the result unchanged: they may differ on --resume (steps may be raised).
RESUME_FREE = frozenset({"steps", "out", "resume", "overwrite", "progress", "debug", "checkpoint_every", "log_every",
                         "backend", "fit_cache", "config"})
# Config sections that only one kind of method reads.
_METHOD_SECTIONS = {"defocus_net": ("gs-siamese", "dered"), "depth_net": ("gs-siamese", "dered"),
                    "d3net": ("d3net",), "mddnet": ("mddnet",)}
_FIT_SETTINGS = frozenset({"fit_iterations", "fit_propagate", "fit_sigma_per_coc"})


def _json_like(value: Any) -> Any:
    """As config.json stores it, so a saved config and a fresh one compare equal (tuples are lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _json_like(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_like(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _resume_differences(saved_config: dict, config: dict) -> list[tuple[str, Any, Any]]:
    """(flag, saved value, new value) of every setting that differs and changes the result."""
    from gs_dfd.train.config import SUPERVISED_METHODS, TrainConfig

    defaults = _json_like(TrainConfig(out=Path(".")))
    method = config.get("method", defaults.get("method"))
    changed: list[tuple[str, Any, Any]] = []

    def compare(saved: dict, new: dict, default: dict, top: bool) -> None:
        for key, value in new.items():
            if top and key in RESUME_FREE:
                continue
            old = saved.get(key, default.get(key))
            if isinstance(value, dict) and isinstance(old, dict):
                sub = default.get(key)
                compare(old, value, sub if isinstance(sub, dict) else {}, False)
            elif _json_like(old) != _json_like(value):
                changed.append(("--" + key.replace("_", "-"), old, value))

    relevant = {k: v for k, v in _json_like(config).items()
                if not (k in _METHOD_SECTIONS and method not in _METHOD_SECTIONS[k])
                and not (k in _FIT_SETTINGS and method in SUPERVISED_METHODS)}
    compare(saved_config if isinstance(saved_config, dict) else {}, relevant, defaults, True)
    return changed


def resume_mismatches(saved_config: dict, config: dict) -> list[str]:
    """The settings (as flags: ``--lr``, ``--crop-hw``, ``--reblur-sigmas-px``) in which ``config``, the resolved
    config of a run about to resume, differs from ``saved_config``, the one its checkpoint or config.json holds,
    where the difference changes the result. Ignored: :data:`RESUME_FREE`, the network sections and fit-cache
    settings the method does not use, and keys only the saved config has (``command``, ``world_size``). A
    setting the saved config lacks (older than it) counts as its default, as loading such a checkpoint does."""
    names: list[str] = []
    for flag, _, _ in _resume_differences(saved_config, config):
        if flag not in names:
            names.append(flag)
    return names


def resume_changes(saved_config: dict, config: dict) -> list[str]:
    """:func:`resume_mismatches` with both values, for the message: ``--method 'd3net' -> 'mddnet'``."""
    def shown(value: Any) -> str:
        return repr(value) if isinstance(value, str) else str(value)

    return [f"{flag} {shown(old)} -> {shown(new)}" for flag, old, new in _resume_differences(saved_config, config)]


def export_weights(path: Path, model: torch.nn.Module, meta: dict) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    _save(path, {"format": WEIGHTS_FORMAT, "method": meta.get("method", "gs-siamese"), "model": state,
                 "model_config": to_plain(model.model_config(), "model_config"), "meta": to_plain(meta, "meta")})


def compose_siamese(defocus_from: Path, depth_from: Path) -> tuple[SiameseDepthModel, dict]:
    """One gs-siamese model from two: the DefocusNet of ``defocus_from`` and the DepthNet of ``depth_from``.

    They fit together because DepthNet never sees pixels of blur, only the CoC map divided by the lens's K (a
    normalised defocus), so a better blur reader can be paired with a DepthNet whose near/far gate was trained
    elsewhere. Returns the model and the ``meta`` of the result (both sources recorded)."""
    parts = {}
    for role, path in (("defocus_net", defocus_from), ("depth_net", depth_from)):
        model, ck = model_from_checkpoint(path)
        if not isinstance(model, SiameseDepthModel):
            raise InputError(path, f"method {ck.get('method')!r} has no DefocusNet + DepthNet to take apart", "method")
        meta = ck.get("meta") or {k: ck[k] for k in ("method", "step") if k in ck}
        parts[role] = (model, {"file": str(path), **{k: v for k, v in meta.items() if k != "scenes"}})
    defocus, depth = parts["defocus_net"][0].defocus, parts["depth_net"][0].depth
    composed = SiameseDepthModel(defocus.cfg, depth.cfg)
    composed.defocus.load_state_dict(defocus.state_dict())
    composed.depth.load_state_dict(depth.state_dict())
    composed.eval()
    src = parts["defocus_net"][1]
    meta = {"method": "gs-siamese", "steps": src.get("steps", src.get("step", 0)),
            "composed_from": {role: info for role, (_, info) in parts.items()}}
    return composed, meta


def model_from_checkpoint(path: Path, field: str = "--checkpoint") -> tuple[torch.nn.Module, dict]:
    """The network a checkpoint (or model.pt) records, by its ``method`` (files without one: gs-siamese);
    ``field`` is the flag that named the file, for the one-line errors."""
    ck = load_checkpoint(path, field)
    method = ck.get("method") or "gs-siamese"
    if method not in METHODS:
        raise InputError(path, f"unknown method {method!r} (this gs_dfd knows {', '.join(METHODS)})", "method")
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
