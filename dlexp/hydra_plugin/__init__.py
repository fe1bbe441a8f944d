"""dlexp's Optuna sweeper under a name Hydra accepts: Hydra takes sweepers only from the hydra_plugins namespace.

pyproject.toml installs this folder as the package hydra_plugins.dlexp; the sweeper itself is dlexp/sweeps/optuna.py.
"""
from hydra.core.plugins import Plugins

from dlexp.sweeps.optuna import OptunaSweeper as _OptunaSweeper


class OptunaSweeper(_OptunaSweeper):
    """dlexp.sweeps.optuna.OptunaSweeper as hydra_plugins.dlexp.OptunaSweeper (conf/hydra/sweeper/optuna.yaml)."""


def register() -> None:
    """Make OptunaSweeper known to Hydra where its scan of hydra_plugins missed it (an editable install)."""
    plugins = Plugins.instance()
    if f"{__name__}.OptunaSweeper" not in plugins.class_name_to_class:
        plugins.register(OptunaSweeper)
