"""The run record: metrics.json's status (completed | interrupted | failed) written once per attempt, with the
wall time of every attempt of the run added up (docs/contracts.md, C3)."""
from __future__ import annotations

import time
from typing import Any

from dlexp.engine.rundir import RunDir


class RunRecord:
    """metrics.json of one attempt of a run: `completed`, `interrupted` or `failed` writes it, once.

    A resumed attempt keeps counting wall time from the previous attempts' total. Ranks other than 0 of a
    multi-process run record nothing (writes=False).
    """

    def __init__(self, run_dir: RunDir, resumed: bool, writes: bool = True) -> None:
        self.run_dir, self.writes = run_dir, writes
        self.start = time.time()
        self.previous_wall = float(run_dir.metrics().get("wall_s", 0.0)) if resumed else 0.0

    def wall_s(self) -> float:
        return round(time.time() - self.start + self.previous_wall, 2)

    def completed(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The run's final metrics with wall_s and status; returns what was written."""
        return self._write({**metrics, "status": "completed"})

    def interrupted(self, resume: str) -> dict[str, Any]:
        return self._write({"status": "interrupted", "resume": resume})

    def failed(self, message: str) -> dict[str, Any]:
        return self._write({"status": "failed", "error": message})

    def _write(self, metrics: dict[str, Any]) -> dict[str, Any]:
        metrics = {**metrics, "wall_s": self.wall_s()}
        if self.writes:
            self.run_dir.write_metrics(metrics)
        return metrics
