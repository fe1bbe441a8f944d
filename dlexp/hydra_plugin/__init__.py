"""dlexp's Optuna sweeper under a name Hydra accepts: Hydra takes sweepers only from the hydra_plugins namespace.

pyproject.toml installs this folder as the package hydra_plugins.dlexp; the sweeper itself is dlexp/search.py.
"""
from dlexp.search import OptunaSweeper as _OptunaSweeper


class OptunaSweeper(_OptunaSweeper):
    """dlexp.search.OptunaSweeper as hydra_plugins.dlexp.OptunaSweeper (conf/hydra/sweeper/optuna.yaml)."""
