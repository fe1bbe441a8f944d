"""Console and train.log: the handlers a Hydra run has, also for a resumed run, and Lightning's records routed there."""
from __future__ import annotations

import logging
import logging.config
import warnings
from pathlib import Path

import yaml

from dlexp.config.compose import conf_dir
from dlexp.engine.rundir import LOG


def append_to_run_log(run_dir: Path) -> None:
    """The console and train.log handlers of conf/hydra/default.yaml, appending to the run's train.log (resume)."""
    job_logging = yaml.safe_load((conf_dir() / "hydra" / "default.yaml").read_text())["job_logging"]
    job_logging["handlers"]["file"]["filename"] = str(run_dir / LOG)
    job_logging["handlers"]["file"]["mode"] = "a"
    logging.config.dictConfig(job_logging)


def route_lightning_logs() -> None:
    """Lightning adds its own console handler when imported before logging is set up: send its records to ours."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip"))  # ads
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation, not the user's
    warnings.filterwarnings("ignore", message=".*no `validation_step`.*")  # GANs: no validation, by design


def close_handlers() -> None:
    """Close every log file (before the run directory that holds train.log is removed)."""
    logging.shutdown()
    for handler in logging.getLogger().handlers:
        handler.close()
