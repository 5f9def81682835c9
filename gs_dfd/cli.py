"""``gs-dfd``: depth from defocus with defocus-aware 3D Gaussian splatting.

Subcommands are tyro dataclass configs; their documented fields are the
``--help`` text. Errors a user can act on print as one line and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import re
import sys
from typing import Callable

from gs_dfd.console import console
from gs_dfd.errors import GsDfdError, InputError, Interrupted, os_error_reason

# Heavy modules (tyro, torch through the optics) are imported inside the functions: a Ctrl-C while they load
# then ends in the one-line "interrupted" of :func:`entrypoint`, not in a traceback.


# A single line break inside a paragraph, not before a list item ("- ", "* ", "1. ", "2) ").
_LINE_CONTINUES = re.compile(r"(?<=\S)\n(?![ \t]*(?:[-*] |\d+[.)] |\n))")


def _join_wrapped_field_docs() -> None:
    """Field docstrings wrapped over several source lines showed in ``--help`` with their line breaks: tyro 1.0
    joins a docstring's single line breaks before it dedents the text, and only before a letter, so indented
    continuation lines (and those starting with a bracket or a quote) kept their break. Here the text is dedented
    first and every single break is joined except before a list item. A no-op if tyro's internals move."""
    from tyro import _strings

    join = getattr(_strings, "remove_single_line_breaks", None)
    if join is None or getattr(join, "dedents_first", False):
        return

    def dedent_then_join(text: str) -> str:
        return join(_LINE_CONTINUES.sub(" ", inspect.cleandoc(text)))

    dedent_then_join.dedents_first = True  # type: ignore[attr-defined]
    _strings.remove_single_line_breaks = dedent_then_join


def _commands(argv: list[str] | None = None) -> tuple[object, dict[type, Callable[[object], int]]]:
    from typing import Annotated, Union

    import tyro

    from gs_dfd.commands import check, evaluate, export, fit, import_photos, predict, synth, train

    # ``train --config FILE.yaml``: the file's values become the defaults that flags override.
    args = list(sys.argv[1:] if argv is None else argv)
    train_defaults = train.defaults_from_argv(args[1:]) if args[:1] == ["train"] else None
    train_kw = {"default": train_defaults} if train_defaults is not None else {}

    union = Union[
        Annotated[synth.SynthCommand, tyro.conf.subcommand("synth", prefix_name=False)],
        Annotated[check.CheckConfig, tyro.conf.subcommand("check", prefix_name=False)],
        Annotated[fit.FitConfig, tyro.conf.subcommand("fit", prefix_name=False)],
        Annotated[evaluate.EvalConfig, tyro.conf.subcommand("eval", prefix_name=False)],
        Annotated[export.ExportConfig, tyro.conf.subcommand("export", prefix_name=False)],
        Annotated[train.TrainConfig, tyro.conf.subcommand("train", prefix_name=False, **train_kw)],
        Annotated[predict.PredictConfig, tyro.conf.subcommand("predict", prefix_name=False)],
        Annotated[import_photos.ImportConfig, tyro.conf.subcommand("import", prefix_name=False)],
    ]
    runners = {
        synth.SynthCommand: lambda c: synth.run(c.kind),
        check.CheckConfig: check.run,
        fit.FitConfig: fit.run,
        evaluate.EvalConfig: evaluate.run,
        export.ExportConfig: export.run,
        train.TrainConfig: train.run,
        predict.PredictConfig: predict.run,
        import_photos.ImportConfig: import_photos.run,
    }
    return union, runners


def _configure_threads() -> None:
    """Torch on a small machine: one pool, sized deliberately (``GS_DFD_THREADS`` overrides)."""
    import torch

    n = int(os.environ.get("GS_DFD_THREADS", os.environ.get("OMP_NUM_THREADS", "0")) or 0)
    torch.set_num_threads(n if n > 0 else max(1, min(os.cpu_count() or 1, 8)))


def _os_error_line(exc: OSError) -> str:
    """An OS error as the user can act on it: the path and what the system said (disk full, read-only, ...)."""
    where = str(exc.filename) if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    return f"{where}: {os_error_reason(exc)}" if where else os_error_reason(exc)


def _non_finite_flag(cfg: object) -> str | None:
    """The first float flag (nested configs too) given as nan or inf: no setting of gs-dfd means that. Nested
    configs' flags carry no prefix (``tyro.conf.OmitArgPrefixes``, see :func:`main`)."""
    if not dataclasses.is_dataclass(cfg):
        return None
    from gs_dfd.utils.flags import flag_name

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        flag = flag_name(type(cfg), f.name)
        if dataclasses.is_dataclass(value):
            found = _non_finite_flag(value)
            if found:
                return found
        values = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            return flag
    return None


def run_guarded(run: Callable[[object], int], cfg: object, debug: bool = False) -> int:
    """Run a command the way every gs_dfd entry point does: threads set, freed memory kept (glibc; see
    :mod:`gs_dfd.utils.malloc`), one-line errors, exit codes 2 (any failure) and 130 (interrupted);
    ``debug`` re-raises instead. OS errors (disk full, read-only, a file where a folder should be) are
    one line too; anything else is reported as an internal error, in one line, with a pointer to --debug."""
    from gs_dfd.optics.thin_lens import LensError
    from gs_dfd.utils.malloc import keep_freed_memory

    try:
        bad = _non_finite_flag(getattr(cfg, "kind", cfg))
        if bad:
            raise InputError(None, "must be a finite number (got nan or inf)", bad)
        _configure_threads()
        keep_freed_memory()
        return run(cfg)
    except Interrupted as exc:
        console.error(str(exc))
        return 130
    except KeyboardInterrupt:
        if debug:
            raise
        console.error("interrupted")
        return 130
    except (GsDfdError, LensError) as exc:
        if debug:
            raise
        console.error(str(exc))
        return 2
    except OSError as exc:
        if debug:
            raise
        console.error(_os_error_line(exc))
        return 2
    except MemoryError:
        if debug:
            raise
        console.error("out of memory: use smaller images (or fewer at once)")
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback is one flag away
        if debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        console.error(f"internal error ({type(exc).__name__}: {first[:200]}); run again with --debug for the "
                      f"traceback and please report it")
        return 2


def main(argv: list[str] | None = None) -> int:
    import tyro

    from gs_dfd.optics.thin_lens import LensError

    _join_wrapped_field_docs()
    try:
        union, runners = _commands(argv)
    except (GsDfdError, LensError) as exc:  # a bad --config file
        console.error(str(exc))
        return 2
    except KeyboardInterrupt:  # Ctrl-C while the modules load
        console.error("interrupted")
        return 130
    cfg = tyro.cli(union, args=argv, prog="gs-dfd", description="Depth from defocus with defocus-aware 3D Gaussian splatting.",
                   config=(tyro.conf.OmitArgPrefixes,))
    debug = bool(getattr(getattr(cfg, "kind", cfg), "debug", False))
    return run_guarded(runners[type(cfg)], cfg, debug)


def run_tool(run: Callable[[object], int], config_type: type) -> None:
    """Entry point of a script in tools/: its tyro config, then :func:`run_guarded`."""
    import tyro

    sys.exit(run_guarded(run, tyro.cli(config_type)))


def _share_cores_politely() -> None:
    """OpenMP threads that wait for work sleep instead of spinning (unless the user set ``OMP_WAIT_POLICY``).

    Spinning is the default of GNU OpenMP, which torch and the C++ kernels use: two gs-dfd runs on the same cores
    then burn each other's time slices waiting, and each runs several times slower than half its solo speed.
    Read once, when the OpenMP runtime loads, so this runs before torch is imported.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def entrypoint() -> None:
    _share_cores_politely()
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C while tyro parses or between steps the guard does not cover
        console.error("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    entrypoint()
