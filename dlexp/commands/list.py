"""`dlexp list [GROUP]`: every choice of every config group (or of one), with the first line of its file."""
from __future__ import annotations

from pathlib import Path

from dlexp.config.compose import conf_dir, default_choices, did_you_mean, groups
from dlexp.errors import ConfigError

HIDDEN = ("hydra", "paths")  # groups of the machinery, not of an experiment


def describe(path: Path) -> str:
    """The first comment line of a config file that is not a Hydra directive."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("#") and not line.startswith("# @"):
            return line.lstrip("# ").strip()
        if line and not line.startswith("#"):
            break
    return ""


def main(args: list[str]) -> int:
    if len(args) > 1:
        raise ConfigError("dlexp list takes at most one GROUP")
    known = {g: c for g, c in groups().items() if g not in HIDDEN}
    group = args[0] if args else None
    if group is not None and group not in known:
        raise ConfigError(f"unknown group '{group}'{did_you_mean(group, list(known))}; groups: {', '.join(known)}")
    defaults = default_choices()
    for name in [group] if group else known:
        print(f"{name}:" + (f"  (default: {defaults[name]})" if defaults.get(name) else ""))
        width = max((len(c) for c in known[name]), default=0)
        for choice in known[name]:
            print(f"  {choice:<{width}}  {describe(conf_dir() / name / f'{choice}.yaml')}")
        if not known[name]:
            print("  (none yet)")
    return 0
