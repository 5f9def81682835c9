"""The one console: results to stdout, warnings and errors to stderr, progress bars."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


class Console:
    quiet: bool = False

    def print(self, msg: str = "") -> None:
        if not self.quiet:
            print(msg, flush=True)

    def warn(self, msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    def error(self, msg: str) -> None:
        print(f"error: {msg}", file=sys.stderr, flush=True)

    def progress(self, items: Iterable[T], desc: str, total: int | None = None, enabled: bool = True) -> Iterable[T]:
        """A tqdm bar on stderr, silent when stderr is not a terminal-like stream or disabled."""
        if not enabled or self.quiet:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, total=total, file=sys.stderr, dynamic_ncols=True, leave=False)


console = Console()
