"""The discovery protocol, defined once: dataclass defaults feed hydra, argparse and the tables."""

from __future__ import annotations

import argparse

import pytest

from lostreg.cli.common import as_flag, protocol_from_args, protocol_overrides, protocol_parent_parser
from lostreg.config import ConfigError, compose_config, protocol_from_config
from lostreg.protocol import (
    DiscoveryProtocol,
    FeatureConfig,
    LostConfig,
    ProtocolError,
    TokenCutConfig,
    describe_protocol,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[protocol_parent_parser()])
    return parser.parse_args(list(argv))


def test_hydra_and_argparse_defaults_are_the_dataclass_defaults() -> None:
    default = DiscoveryProtocol()
    assert protocol_from_config(compose_config([])) == default
    assert protocol_from_args(parse()) == default
    assert protocol_overrides(parse()) == []
    assert (default.features.which, default.features.layer, default.lost.k_patches) == ("k", -1, 100)


def test_one_protocol_from_either_front_end() -> None:
    args = parse("--which", "q", "--layer", "-2", "--l2-normalize", "--k-patches", "50", "--gram-bias", "-0.2")
    from_args = protocol_from_args(args)
    cfg = compose_config(protocol_overrides(args))
    assert protocol_from_config(cfg) == from_args == DiscoveryProtocol(
        features=FeatureConfig("q", -2, True), lost=LostConfig(50, -0.2))
    assert cfg.run_dir.endswith("/q_layer-2_k50_bias-0.2_l2")


@pytest.mark.parametrize("overrides, message", [
    (["lost.k_patches=0"], "lost.k_patches must be >= 1, got 0"),
    (["features.which=x"], "features.which must be one of q, k, v, out; got 'x'"),
    (["lost.gram_bias=nan"], "lost.gram_bias must be a finite number"),
])
def test_out_of_range_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ProtocolError) as err:
        protocol_from_config(compose_config(overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override, words", [
    ("lost.k_patches=abc", ["lost.k_patches=abc", "could not be converted to Integer"]),
    ("dataset.no_hard=maybe", ["dataset.no_hard=maybe", "not a valid bool"]),
    ("features.nosuch=1", ["features.nosuch", "not in"]),
])
def test_the_schema_types_every_value(override: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        compose_config([override])
    assert all(word in str(err.value) for word in words), str(err.value)


def test_argparse_errors_use_the_flag_names() -> None:
    with pytest.raises(ProtocolError, match="^--k-patches must be >= 1, got 0$"):
        protocol_from_args(parse("--k-patches", "0"))
    assert as_flag("features.layer must be in [-12, 11] (dino has 12 blocks), got 12").startswith("--layer must be in")


def test_older_run_configs_take_the_defaults_of_new_keys() -> None:
    old = {"lost": {"k_patches": 100, "gram_bias": 0.0}, "features": {"which": "k", "layer": -1}}
    assert DiscoveryProtocol.from_mapping(old) == DiscoveryProtocol()
    with pytest.raises(ProtocolError, match="unknown setting lost.kpatches"):
        DiscoveryProtocol.from_mapping({"lost": {"kpatches": 3}})


def test_names_and_descriptions() -> None:
    assert DiscoveryProtocol().name == "k_layer-1_k100_bias0.0"  # the run-directory name of earlier versions
    assert DiscoveryProtocol(lost=LostConfig(gram_bias=0)).name == "k_layer-1_k100_bias0.0"
    assert DiscoveryProtocol(features=FeatureConfig("v", -3)).departures() == ["which=v", "layer=-3"]
    assert describe_protocol(DiscoveryProtocol()) == "raw keys of the last layer, k=100, Gram bias 0"
    assert DiscoveryProtocol().as_dict() == {"method": "lost", "features": {"which": "k", "layer": -1,
                                             "l2_normalize": False}, "lost": {"k_patches": 100, "gram_bias": 0.0,
                                                                           "exclude_outliers": False},
                                             "tokencut": {"tau": 0.2, "eps": 1e-5, "eig": "torch64"}}
    # Identity: the chosen method's knobs only (TokenCut's tau cannot change a LOST box).
    assert DiscoveryProtocol().identity() == {"method": "lost", "features": {"which": "k", "layer": -1,
                                              "l2_normalize": False}, "lost": {"k_patches": 100, "gram_bias": 0.0}}
    cut = DiscoveryProtocol(method="tokencut", tokencut=TokenCutConfig(tau=0.3, eig="scipy"))
    assert cut.name == "tokencut_k_layer-1_tau0.3_scipy" and cut.departures() == ["method=tokencut", "tau=0.3",
                                                                                   "eig=scipy"]
