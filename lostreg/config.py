"""Hydra configs through the compose API, behind lostreg's own command line.

``@hydra.main`` owns ``sys.argv`` and does not mix with sub-commands, so lostreg composes
configs itself (``initialize_config_module`` + ``compose``) from ``key=value`` overrides and
does what ``hydra.main`` would otherwise do (run directory, config dump) in the runner.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

CONFIG_MODULE = "lostreg.configs"

#: Config sections that can change a prediction. A run directory refuses to mix results
#: whose values here differ; device, batch_size, num_workers and run_dir may change freely.
RESULT_KEYS = ("backbone", "dataset", "weights", "lost", "features", "max_size")


def _protocol_name(features: DictConfig, lost: DictConfig) -> str:
    """Run-directory name of a protocol: ``k_layer-1_k100_bias0.0`` (+ ``_l2`` when normalised)."""
    name = f"{features.which}_layer{features.layer}_k{lost.k_patches}_bias{lost.gram_bias}"
    return name + ("_l2" if features.get("l2_normalize", False) else "")


# Used by configs/config.yaml's default run_dir.
OmegaConf.register_new_resolver("lostreg_protocol", _protocol_name, replace=True)


class ConfigError(ValueError):
    """An override that does not compose (unknown group option, bad syntax, missing value)."""


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with hydra ``overrides`` (``key=value``, ``group=option``).

    Raises:
        ConfigError: with hydra's one-line reason.
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except Exception as err:  # hydra raises several types; the message is what matters
        # Hydra appends its search path to every message: noise for a user.
        message = " ".join(str(err).split()).split(" Config search path:")[0]
        raise ConfigError(message) from None
    finally:
        GlobalHydra.instance().clear()
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing required value(s): {', '.join(missing)} (pass e.g. {missing[0]}=...)")
    return cfg


def expand_sweeps(overrides: Sequence[str]) -> list[list[str]]:
    """Expand hydra sweep syntax (``backbone=dino,dinov2``, ``range(...)``) into override lists.

    Returns the cartesian product in the order given, one list of plain overrides per run.
    """
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    choices: list[list[str]] = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(combo) for combo in itertools.product(*choices)]


def result_affecting(cfg: DictConfig) -> dict[str, Any]:
    """The part of a config that can change predictions, as plain resolved data."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return {key: container.get(key) for key in RESULT_KEYS}


def dataset_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Keyword arguments for :func:`lostreg.datasets.build_dataset` from ``cfg.dataset``."""
    kwargs = OmegaConf.to_container(cfg.dataset, resolve=True)
    assert isinstance(kwargs, dict)
    kwargs.pop("name", None)
    return kwargs
