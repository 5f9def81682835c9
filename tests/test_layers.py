"""The package's layers (docs/DESIGN.md) as a test: every import in gs_dfd/ and tools/, read with ``ast``.

Imports inside functions count too: a lazy import is still a dependency, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "gs_dfd"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, source: str | None = None) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every import of a gs_dfd module in ``path`` (or in
    ``source``, read as if it were ``path``), relative imports resolved; ``from gs_dfd.x import y`` also counts as
    importing ``gs_dfd.x.y`` when that is a module."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names if alias.name.split(".")[0] == "gs_dfd"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "gs_dfd":
                continue
            names = [alias.name for alias in node.names]
            found.append((node.lineno, module, names))
            found += [(node.lineno, f"{module}.{n}", []) for n in names if _is_module(f"{module}.{n}")]
    return found


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "csrc" not in p.parts)


def _violations(rule) -> list[str]:
    bad = []
    for path in _library_modules():
        me = _module_name(path)
        for line, module, _ in _imports(path):
            if not rule(me, module):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return sorted(set(bad))


def test_the_scan_sees_the_package():
    """Guard the guard: the walk finds modules and their imports (relative ones resolved)."""
    names = {_module_name(p) for p in _library_modules()}
    assert {"gs_dfd.cli", "gs_dfd.optics.thin_lens", "gs_dfd.fit.pipeline", "gs_dfd.commands.fit"} <= names
    imported = {m for _, m, _ in _imports(PACKAGE / "commands" / "fit.py")}
    assert "gs_dfd.fit.pipeline" in imported


def test_only_the_command_line_imports_the_commands():
    """Commands sit on top: a library module that imported one would make the package a cycle (commands -> fit
    -> commands) and tie library code to flags. Only gs_dfd/commands/ and gs_dfd/cli.py may."""
    def allowed(me: str, module: str) -> bool:
        on_top = _within(me, "gs_dfd.commands") or me == "gs_dfd.cli"
        return on_top or not (_within(module, "gs_dfd.commands") or _within(module, "gs_dfd.cli"))

    assert _violations(allowed) == []


def test_optics_imports_nothing_of_the_project():
    """The thin lens is the contract everything else builds on: it depends on nothing else of gs_dfd."""
    assert _violations(lambda me, module: not _within(me, "gs_dfd.optics") or _within(module, "gs_dfd.optics")) == []


RENDER_MAY_IMPORT = ("gs_dfd.render", "gs_dfd.optics", "gs_dfd.utils", "gs_dfd.errors", "gs_dfd.console")


def test_render_imports_nothing_above_optics():
    """The renderer knows Gaussians, cameras and lenses, not scenes, fits or networks."""
    def allowed(me: str, module: str) -> bool:
        return not _within(me, "gs_dfd.render") or any(_within(module, p) for p in RENDER_MAY_IMPORT)

    assert _violations(allowed) == []


def test_synth_never_imports_render():
    """Synthetic stacks are blurred by their own layered model, not by the renderer the fit inverts: a fit
    judged on data made by its own forward model would be judged on its own assumptions."""
    assert _violations(lambda me, module: not (_within(me, "gs_dfd.synth") and _within(module, "gs_dfd.render"))) == []


FIT_MAY_IMPORT = ("gs_dfd.fit", "gs_dfd.data", "gs_dfd.optics", "gs_dfd.render", "gs_dfd.models", "gs_dfd.utils",
                  "gs_dfd.errors", "gs_dfd.console")
PIPELINE_MAY_ALSO_IMPORT = ("gs_dfd.eval", "gs_dfd.export", "gs_dfd.viz", "gs_dfd.infer")


def test_the_fit_orchestration_is_one_module():
    """The fit's building blocks (model, losses, optimisation, ...) know scenes, lenses, the renderer and the
    networks' checkpoints; writing outputs, metrics, pictures and the network prior is gs_dfd.fit.pipeline's
    alone, which is what the command and the training cache call."""
    def allowed(me: str, module: str) -> bool:
        may = FIT_MAY_IMPORT + (PIPELINE_MAY_ALSO_IMPORT if me == "gs_dfd.fit.pipeline" else ())
        return not _within(me, "gs_dfd.fit") or any(_within(module, p) for p in may)

    assert _violations(allowed) == []


def test_infer_does_not_import_training():
    """Prediction loads weights and runs a network; it needs none of the training code (the model registry and
    checkpoint reading live in gs_dfd.models)."""
    assert _violations(lambda me, module: not (_within(me, "gs_dfd.infer") and _within(module, "gs_dfd.train"))) == []


def test_tools_import_no_private_names():
    """Scripts in tools/ use gs_dfd's public API: a private name (``_x``) may change without notice."""
    bad = []
    for path in sorted((REPO / "tools").glob("*.py")):
        for line, module, names in _imports(path):
            private = [n for n in [*module.split("."), *names] if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {', '.join(private)} from {module}")
    assert bad == []


@pytest.mark.parametrize("source, expected", [
    ("from gs_dfd.commands import fit", {"gs_dfd.commands", "gs_dfd.commands.fit"}),
    ("from ..commands.fit import run", {"gs_dfd.commands.fit"}),
    ("from . import pipeline", {"gs_dfd.fit", "gs_dfd.fit.pipeline"}),
    ("def f():\n    import gs_dfd.cli\n", {"gs_dfd.cli"}),
    ("import numpy\nfrom os import path", set()),
])
def test_the_scan_resolves_every_kind_of_import(source, expected):
    assert {m for _, m, _ in _imports(PACKAGE / "fit" / "probe.py", source)} == expected
