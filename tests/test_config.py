"""Config: params.yaml -> recipes.<dataset> -> --set, strict keys and types."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_section
from pipeline.frames import BinConfig
from pipeline.runs import TrainConfig

PARAMS = {
    "bin": {"out_size": None, "dtype": "int16"},
    "train": {"lr": 0.1, "epochs": 8, "augment": {"flip_p": 0.0, "max_shift_px": 2}},
    "recipes": {"gest": {"bin": {"out_size": [64, 64], "dtype": "uint8"},
                         "train": {"lr": 0.001, "epochs": 200, "augment": {"max_shift_px": 5}}}},
}


def test_recipe_applies_over_the_section_and_merges_nested_keys():
    cfg = load_section("train", TrainConfig, PARAMS, dataset="gest")
    assert (cfg.lr, cfg.epochs, cfg.augment.flip_p, cfg.augment.max_shift_px) == (0.001, 200, 0.0, 5)
    assert load_section("bin", BinConfig, PARAMS, dataset="gest").out_size == (64, 64)
    assert load_section("train", TrainConfig, PARAMS, dataset="other").lr == 0.1  # no recipe: the section as it is


def test_command_line_wins_over_the_recipe():
    over = ["train.lr=0.5", "bin.dtype=float32", "train.augment.flip_p=0.5"]
    cfg = load_section("train", TrainConfig, PARAMS, over, dataset="gest")
    assert (cfg.lr, cfg.epochs, cfg.augment.flip_p, cfg.augment.max_shift_px) == (0.5, 200, 0.5, 5)
    assert load_section("bin", BinConfig, PARAMS, over, dataset="gest").dtype == "float32"
    assert load_section("train", TrainConfig, PARAMS, ["recipes.gest={}"], dataset="gest").lr == 0.1


@pytest.mark.parametrize("over, match", [
    (["trian.lr=0.5"], "unknown section 'trian'"),
    (["train.lrr=0.5"], "unknown key"),
    (["train.lr=fast"], "train.lr must be float"),
    (["train.method=distill"], "choose one of baseline, multi_T, tsd, ssd, tssd"),
    (["train.lr"], "key.path=value"),
    (["train=5"], "--set train must be a mapping"),
    (["recipes.gest.train.lrr=1"], r"unknown key\(s\) in recipes.gest.train"),
])
def test_bad_overrides_are_errors(over, match):
    with pytest.raises(ConfigError, match=match):
        load_section("train", TrainConfig, PARAMS, over, dataset="gest")


def test_repository_params_load():
    for name in ("digits_dvs", "dvs_gesture", "cifar10_dvs"):
        load_section("train", TrainConfig, dataset=name)
        load_section("bin", BinConfig, dataset=name)
    assert load_section("train", TrainConfig).method in ("baseline", "tsd", "ssd", "tssd")
