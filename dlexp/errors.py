"""The errors a dlexp command ends with; dlexp/cli.py maps each to its exit code (docs/contracts.md, C1)."""
from __future__ import annotations

import signal


class ConfigError(Exception):
    """A usage or config mistake, found before training: one line, exit code 2, no run directory left behind."""


class RunFailed(Exception):
    """A run that started and failed (a NaN loss, a crash): recorded as failed in metrics.json, exit code 1."""


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM: training stopped after a batch and a resumable checkpoint was written (exit 128 + signal)."""

    def __init__(self, signum: int, resume: str = "") -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}" + (f": resume with\n  {resume}" if resume else ""))
        self.signum, self.resume = signum, resume
