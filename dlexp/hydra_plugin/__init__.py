"""dlexp's Hydra plugins under names Hydra accepts: Hydra takes sweepers and launchers only from the hydra_plugins
namespace.

pyproject.toml installs this folder as the package hydra_plugins.dlexp; the plugins themselves are
dlexp/sweeps/optuna.py (the Optuna sweeper) and dlexp/sweeps/parallel.py (parallel jobs on one machine).
"""
from hydra.core.plugins import Plugins

from dlexp.sweeps.optuna import OptunaSweeper as _OptunaSweeper
from dlexp.sweeps.parallel import ParallelLauncher as _ParallelLauncher


class OptunaSweeper(_OptunaSweeper):
    """dlexp.sweeps.optuna.OptunaSweeper as hydra_plugins.dlexp.OptunaSweeper (conf/hydra/sweeper/optuna.yaml)."""


class ParallelLauncher(_ParallelLauncher):
    """dlexp.sweeps.parallel.ParallelLauncher as hydra_plugins.dlexp.ParallelLauncher (conf/hydra/launcher/)."""


def register() -> None:
    """Make dlexp's plugins known to Hydra where its scan of hydra_plugins missed them (an editable install)."""
    plugins = Plugins.instance()
    for plugin in (OptunaSweeper, ParallelLauncher):
        if f"{__name__}.{plugin.__name__}" not in plugins.class_name_to_class:
            plugins.register(plugin)
