"""CLI subcommands: each module holds a tyro config dataclass and its ``run``."""
