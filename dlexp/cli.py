"""`dlexp COMMAND [args]`: argv -> a table of commands, and the one place that maps errors to exit codes
(docs/contracts.md, C1). Help and `list` import nothing heavy (no torch, Lightning or Hydra)."""
from __future__ import annotations

import importlib
import sys
from importlib.metadata import version

from dlexp.commands import usage
from dlexp.config.compose import did_you_mean
from dlexp.errors import ConfigError, RunFailed, RunInterrupted

# each command is a module with main(args) -> int, imported only when it runs (start-up: torch and Hydra load
# only for the commands that need them)
COMMANDS = {name: f"dlexp.commands.{name}"
            for name in ("train", "resume", "eval", "sample", "compare", "list", "runs")}


def exit_code(error: Exception) -> int:
    """0 success, 2 usage or config error, 1 a failed run, 128 + signal after Ctrl-C (130) or SIGTERM (143)."""
    if isinstance(error, RunInterrupted):
        return 128 + error.signum
    return 2 if isinstance(error, ConfigError) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage.MAIN)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"dlexp {version('dlexp')}")
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        hint = did_you_mean(command, list(COMMANDS))
        print(f"error: unknown subcommand '{command}'{hint}; use one of: {', '.join(COMMANDS)} (dlexp --help)",
              file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in args):
        print(usage.text(command))
        return 0
    try:
        return importlib.import_module(COMMANDS[command]).main(args)
    except (ConfigError, RunFailed, RunInterrupted) as e:
        print(e if isinstance(e, RunInterrupted) else f"error: {e}", file=sys.stderr)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
