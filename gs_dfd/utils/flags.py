"""How a config field is spelled on the command line, for messages that name it."""

from __future__ import annotations

import typing


def flag_name(owner: type, field: str) -> str:
    """The flag of dataclass ``owner``'s field ``field``: the name its ``tyro.conf.arg`` gives it (the commands drop
    nested sections' prefixes, ``tyro.conf.OmitArgPrefixes``, so a section that keeps one names it there, e.g.
    ``augment.enabled``), else the field's own name; dashes for underscores."""
    hint = typing.get_type_hints(owner, include_extras=True).get(field)
    named = [m.name for m in getattr(hint, "__metadata__", ()) if isinstance(getattr(m, "name", None), str)]
    return "--" + (named[0] if named else field).replace("_", "-")
