"""``gs-dfd``: depth from defocus with defocus-aware 3D Gaussian splatting.

Subcommands are tyro dataclass configs; their documented fields are the
``--help`` text. Errors a user can act on print as one line and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from typing import Annotated, Callable, Union

import tyro

from gs_dfd.console import console
from gs_dfd.errors import GsDfdError, Interrupted
from gs_dfd.optics.thin_lens import LensError
from gs_dfd.utils.malloc import keep_freed_memory


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


_join_wrapped_field_docs()


def _commands(argv: list[str] | None = None) -> tuple[object, dict[type, Callable[[object], int]]]:
    from gs_dfd.commands import check, evaluate, export, fit, predict, synth, train

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
    ]
    runners = {
        synth.SynthCommand: lambda c: synth.run(c.kind),
        check.CheckConfig: check.run,
        fit.FitConfig: fit.run,
        evaluate.EvalConfig: evaluate.run,
        export.ExportConfig: export.run,
        train.TrainConfig: train.run,
        predict.PredictConfig: predict.run,
    }
    return union, runners


def _configure_threads() -> None:
    """Torch on a small machine: one pool, sized deliberately (``GS_DFD_THREADS`` overrides)."""
    import torch

    n = int(os.environ.get("GS_DFD_THREADS", os.environ.get("OMP_NUM_THREADS", "0")) or 0)
    torch.set_num_threads(n if n > 0 else max(1, min(os.cpu_count() or 1, 8)))


def run_guarded(run: Callable[[object], int], cfg: object, debug: bool = False) -> int:
    """Run a command the way every gs_dfd entry point does: threads set, freed memory kept (glibc; see
    :mod:`gs_dfd.utils.malloc`), one-line errors, exit codes
    2 (bad input) and 130 (interrupted); ``debug`` re-raises instead."""
    try:
        _configure_threads()
        keep_freed_memory()
        return run(cfg)
    except Interrupted as exc:
        console.error(str(exc))
        return 130
    except (GsDfdError, LensError) as exc:
        if debug:
            raise
        console.error(str(exc))
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        console.error("interrupted")
        return 130


def main(argv: list[str] | None = None) -> int:
    try:
        union, runners = _commands(argv)
    except (GsDfdError, LensError) as exc:  # a bad --config file
        console.error(str(exc))
        return 2
    cfg = tyro.cli(union, args=argv, prog="gs-dfd", description="Depth from defocus with defocus-aware 3D Gaussian splatting.",
                   config=(tyro.conf.OmitArgPrefixes,))
    debug = bool(getattr(getattr(cfg, "kind", cfg), "debug", False))
    return run_guarded(runners[type(cfg)], cfg, debug)


def run_tool(run: Callable[[object], int], config_type: type) -> None:
    """Entry point of a script in tools/: its tyro config, then :func:`run_guarded`."""
    sys.exit(run_guarded(run, tyro.cli(config_type)))


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
