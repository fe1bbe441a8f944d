"""Checking overrides before anything runs: unknown choices and keys, wrong types, missing values, a monitored
metric the run does not log, an optional integration that is not installed."""
from __future__ import annotations

import importlib.util
import inspect
import tempfile
from pathlib import Path
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import _locate
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from dlexp.config.compose import compose, did_you_mean, first_line, groups
from dlexp.config.types import check_type
from dlexp.errors import ConfigError


def check_overrides(overrides: list[str]) -> DictConfig:
    """Refuse unknown choices, unknown keys, values of the wrong type, missing required values, a monitored
    metric the run does not log and an optional integration that is not installed.

    Sweep overrides (a,b,c) are checked choice by choice, intervals at both ends, and so is the search space of
    an Optuna search (hydra.sweeper.params), before its first trial. Returns the config of the first job.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse overrides: {first_line(str(e))}") from None
    known = groups()
    _check_installed(parsed)
    _check_launcher(parsed, known)
    first: list[str] = []               # every override at its first value
    alternatives: list[tuple[int, str]] = []  # (position, override at another sweep value)
    given = {o.key_or_group for o in parsed}
    for o in parsed + [o for o in _search_space(parsed, known) if o.key_or_group not in given]:
        i = len(first)
        values = _values(o)
        if o.key_or_group in known:
            for choice in (c for value in values for c in _choices(value)):
                if choice not in known[o.key_or_group] and choice != "null":
                    raise ConfigError(
                        f"unknown {o.key_or_group} '{choice}'{did_you_mean(choice, known[o.key_or_group])}; "
                        f"choose one of: {', '.join(known[o.key_or_group])}"
                    )
        lines = [o.get_key_element() if o.is_delete() and o.value() is None else f"{o.get_key_element()}={v}"
                 for v in values]
        first.append(lines[0])
        alternatives += [(i, line) for line in lines[1:]]
    configs = [_check_one(variant, known) for variant in [first] + [first[:i] + [line] + first[i + 1:]
                                                                   for i, line in alternatives]]
    return configs[0]


def _values(o: Any) -> list[str]:
    """The values of an override to check: each of a sweep's, both ends of an interval (Optuna samples between)."""
    if o.is_interval_sweep():
        ends = (o.value().start, o.value().end)  # Hydra parses interval(16, 128) as floats
        return [str(int(v)) if float(v).is_integer() else str(v) for v in ends]
    return list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]


def _search_space(parsed: list[Any], known: dict[str, list[str]]) -> list[Any]:
    """hydra.sweeper.params as overrides, when the command line picks a sweeper (hparams_search=optuna)."""
    keys = [o.key_or_group for o in parsed]
    if not any(k in ("hparams_search", "experiment") or k.startswith(("hydra/sweeper", "hydra.sweeper")) for k in keys):
        return []
    lines = [o.input_line for o in parsed
             if not o.is_sweep_override() and (o.key_or_group in known or o.key_or_group.startswith("hydra"))]
    cfg = compose(lines, return_hydra_config=True)
    if cfg.hydra.sweeper.get("_target_") == "hydra_plugins.dlexp.OptunaSweeper" and not cfg.get("monitor"):
        task = cfg.hydra.runtime.choices.get("task")
        raise ConfigError(f"an Optuna search optimizes the run's monitored metric, and task '{task}' monitors none: "
                          "set monitor=... and monitor_mode=min|max")
    params = cfg.hydra.sweeper.get("params") or {}
    try:
        return OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    except Exception as e:
        raise ConfigError(f"hydra.sweeper.params: {first_line(str(e))}") from None


# optional integrations: the override that uses one -> (module it needs, its pip package, the dlexp extra)
OPTIONAL = {
    "hparams_search": ("optuna", "optuna", "sweep"),
    "hydra/sweeper=optuna": ("optuna", "optuna", "sweep"),
    "hydra/launcher=joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "sweep"),
    **{f"hydra/launcher={name}": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm")
       for name in ("slurm", "submitit_slurm", "submitit_local")},
}


PARALLEL_LAUNCHER = "hydra_plugins.dlexp.ParallelLauncher"  # conf/hydra/launcher/parallel.yaml


def _check_launcher(parsed: list[Any], known: dict[str, list[str]]) -> None:
    """hydra.launcher.* of hydra/launcher=parallel set on the command line: n_jobs and threads auto or >= 1,
    cuda_devices a list or null (the other launchers check their own settings)."""
    if not any(o.key_or_group.startswith("hydra.launcher.") for o in parsed):
        return
    lines = [o.input_line for o in parsed
             if not o.is_sweep_override() and (o.key_or_group in known or o.key_or_group.startswith("hydra"))]
    launcher = compose(lines, return_hydra_config=True).hydra.launcher
    if launcher.get("_target_") != PARALLEL_LAUNCHER:
        return
    for key in ("n_jobs", "threads"):
        value = launcher.get(key)
        if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ConfigError(f"hydra.launcher.{key} must be auto or a whole number >= 1, got '{value}'")
    devices = launcher.get("cuda_devices")
    if devices is not None and not (isinstance(devices, ListConfig) and len(devices) > 0):
        raise ConfigError(f"hydra.launcher.cuda_devices must be a list of GPUs such as [0,1], or null, got '{devices}'")


def _check_installed(parsed: list[Any]) -> None:
    """An optional integration that is not installed: one line naming the extra that brings it."""
    for o in parsed:
        value = o.get_value_element_as_str() if not o.is_sweep_override() else ""
        need = OPTIONAL.get(f"{o.key_or_group}={value}") or (OPTIONAL.get(o.key_or_group) if value != "null" else None)
        if need and not installed(need[0]):
            raise ConfigError(f"{o.input_line} needs {need[1]}, which is not installed: pip install 'dlexp[{need[2]}]'")


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing too
        return False


def _choices(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        return [v.strip() for v in value[1:-1].split(",") if v.strip()]
    return [value]


def _check_one(overrides: list[str], known: dict[str, list[str]]) -> DictConfig:

    parsed = OverridesParser.create().parse_overrides(overrides)
    group_overrides = [o.input_line for o in parsed if o.key_or_group in known or o.key_or_group.startswith("hydra")]
    base = compose(group_overrides)
    for o in parsed:
        if o.key_or_group in known or o.key_or_group.startswith("hydra"):
            continue
        key = o.key_or_group
        if o.is_add() or o.is_force_add():
            _check_added(base, key, known)
            continue
        if not _has_key(base, key):
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(base, parent) if parent else base
            siblings = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
            where = f"'{parent}'" if parent else "the config"
            full = [f"{parent}.{k}" if parent else k for k in siblings]
            raise ConfigError(
                f"unknown key '{key}'{did_you_mean(key, full)}: {where} has "
                f"{', '.join(siblings) if siblings else 'no such keys'} (use +{key}=... to add a new key)"
            )
        if not o.is_delete():
            check_type(key, OmegaConf.select(base, key, throw_on_resolution_failure=False), o.value())
    # the key overrides onto the composed groups, as Hydra's compose applies them: one composition, not two (start-up)
    cfg = base
    try:
        ConfigLoaderImpl._apply_overrides_to_config(
            [o for o in parsed if not (o.key_or_group in known or o.key_or_group.startswith("hydra"))], cfg)
    except HydraException as e:
        raise ConfigError(first_line(str(e))) from None
    # keys a preset lists under `required:` (a ??? in a preset cannot replace train.yaml's default: OmegaConf
    # merges never overwrite with ???)
    missing = _missing(cfg) + [key for key in cfg.get("required") or [] if OmegaConf.select(cfg, key) is None]
    if missing:
        raise ConfigError(f"required value missing: {', '.join(missing)} (set it, e.g. {missing[0]}=...)")
    _check_monitor(cfg)
    check_loggers(cfg)
    _check_input_kind(cfg)
    _check_vocabulary(cfg)
    return cfg


def _check_vocabulary(cfg: DictConfig) -> None:
    """A net's embedding or output vocabulary must hold every id the dataset can produce."""
    dataset, model = cfg.get("dataset"), cfg.get("model")
    if not isinstance(dataset, DictConfig) or not isinstance(model, DictConfig):
        return
    ids, net = dataset.get("vocab_size"), model.get("vocab_size")
    if isinstance(ids, int) and isinstance(net, int) and net < ids:
        raise ConfigError(f"model.vocab_size={net} is smaller than dataset.vocab_size={ids}: ids up to {ids - 1} "
                          "would not fit the embedding (leave model.vocab_size to follow the dataset)")


def _declared(node: Any, attribute: str) -> Any:
    """A class attribute of a config node's `_target_` (None when undeclared or not importable yet)."""
    try:
        return getattr(_locate(node._target_), attribute, None)
    except Exception:  # a target that cannot be imported is reported when the run is built
        return None


def _check_input_kind(cfg: DictConfig) -> None:
    """The model's nets take the dataset's kind of data (nets declare `input_kinds`, datasets their `kind`)."""
    dataset, model = cfg.get("dataset"), cfg.get("model")
    if not isinstance(dataset, DictConfig) or not isinstance(model, DictConfig) or "_target_" not in dataset:
        return
    kind = dataset.get("kind") or _declared(dataset, "kind")
    nets = [model] + [model[k] for k in ("generator", "discriminator")
                      if isinstance(model.get(k), DictConfig) and "_target_" in model[k]]
    for node in (n for n in nets if "_target_" in n):
        kinds = _declared(node, "input_kinds")
        if kind and kinds and kind not in kinds:
            name = cfg.get("dataset", {}).get("name", "?")
            raise ConfigError(f"model {node._target_.rsplit('.', 1)[-1]} takes {' or '.join(kinds)} data; dataset "
                              f"'{name}' is {kind} data (dataset.kind): choose a model for {kind} data "
                              "(dlexp list model)")


def check_loggers(cfg: DictConfig) -> None:
    """What each logger declares it needs, before anything runs: the module it `requires` installed (else the pip
    line of the dlexp extra that brings it), and its own `preflight` check (MLflow: a required server answers)."""
    for key, node in (cfg.get("logger") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        module, extra = _declared(node, "requires") or (None, None)
        if module and not installed(module):
            raise ConfigError(f"logger={key} needs {module}, which is not installed: pip install 'dlexp[{extra}]'")
        preflight = _declared(node, "preflight")
        if preflight is not None:
            preflight(str(key), node)


def _check_monitor(cfg: DictConfig) -> None:
    """`monitor` must name a metric the run logs: one its task or callbacks declare in `logged_metrics`."""
    monitor = cfg.get("monitor")
    task = cfg.get("task")
    if not monitor or not isinstance(task, DictConfig) or "_target_" not in task:
        return
    names = set(_declared(task, "logged_metrics") or ())
    if not names:
        return
    for callback in (cfg.get("callbacks") or {}).values():
        if isinstance(callback, DictConfig) and "_target_" in callback:
            names |= set(_declared(callback, "logged_metrics") or ())
    if monitor not in names:
        raise ConfigError(f"monitor '{monitor}' is not a metric this run logs{did_you_mean(monitor, sorted(names))}; "
                          f"it logs: {', '.join(sorted(names))}")


def check_writable(folder: Path) -> None:
    """Run directories can be made under folder (a read-only or full disk fails here, not after training)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dlexp-write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write run directories under {folder}: {e.strerror or e}") from None


COLLECTIONS = ("callbacks", "logger")  # named components: a new entry (+callbacks.mine={...}) is legitimate


def _check_added(cfg: DictConfig, key: str, known: dict[str, list[str]]) -> None:
    """+key / ++key must name something that will be read: a parameter of the component (its _target_'s
    signature) it is added to, or a new entry of callbacks/logger. Catches +trainer.max_epoch=5, +modle=x."""
    parent, _, leaf = key.rpartition(".")
    if not parent:
        if leaf in cfg or leaf in known:
            return
        raise ConfigError(f"unknown key or group '{leaf}'{did_you_mean(leaf, [*known, *map(str, cfg.keys())])}")
    node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False)
    if not isinstance(node, DictConfig):
        head = parent.split(".")[0]
        raise ConfigError(f"cannot add '{key}': '{parent}' is not in the config"
                          f"{did_you_mean(head, [*map(str, cfg.keys())]) if head not in cfg else ''}")
    if parent in COLLECTIONS:
        return
    target = node.get("_target_") if "_target_" in node.keys() else None
    if target is None:
        raise ConfigError(f"cannot add '{key}': nothing reads '{leaf}' in '{parent}' "
                          f"(it has {', '.join(map(str, node.keys()))})")
    params = _parameters(str(target))
    if params is not None and leaf not in params:
        raise ConfigError(f"'{leaf}' is not a parameter of {target}{did_you_mean(leaf, sorted(params))} "
                          f"(in '{parent}')")


def _parameters(target: str) -> set[str] | None:
    """Keyword parameters of a _target_ (None when it takes **kwargs or cannot be inspected)."""
    try:
        obj = _locate(target)
        signature = inspect.signature(obj)
    except Exception:
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return {name for name in signature.parameters if name != "self"}


def _missing(node: Any, prefix: str = "") -> list[str]:
    """Keys left at ??? (without resolving interpolations, which may need a running Hydra job)."""
    found = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}{key}"
            if OmegaConf.is_missing(node, key):
                found.append(path)
            elif not OmegaConf.is_interpolation(node, key):
                found += _missing(node._get_node(key), path + ".")
    return found


def _has_key(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
    # `in node` is False for a key left at ???, which may still be set: look at the keys themselves
    return isinstance(node, DictConfig) and leaf in node.keys() or isinstance(node, ListConfig) and leaf.isdigit()
