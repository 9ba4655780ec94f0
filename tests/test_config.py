"""Config: params.yaml -> recipes.<dataset> -> --set, strict keys and types."""

from __future__ import annotations

import pytest

from pipeline.config import BinConfig, ConfigError, TrainConfig, for_dataset, load_section

PARAMS = {
    "bin": {"out_size": None, "dtype": "int16"},
    "train": {"lr": 0.1, "epochs": 8, "augment": {"flip_p": 0.0, "max_shift_px": 2}},
    "recipes": {"gest": {"bin": {"out_size": [64, 64], "dtype": "uint8"},
                         "train": {"lr": 0.001, "epochs": 200, "augment": {"max_shift_px": 5}}}},
}


def test_recipe_applies_over_the_section_and_merges_nested_keys():
    cfg = for_dataset("train", TrainConfig, "gest", PARAMS)
    assert (cfg.lr, cfg.epochs, cfg.augment.flip_p, cfg.augment.max_shift_px) == (0.001, 200, 0.0, 5)
    assert for_dataset("bin", BinConfig, "gest", PARAMS).out_size == (64, 64)
    assert for_dataset("train", TrainConfig, "other", PARAMS).lr == 0.1  # no recipe: the section as it is


def test_command_line_wins_over_the_recipe():
    over = ["train.lr=0.5", "bin.dtype=float32", "train.augment.flip_p=0.5"]
    cfg = for_dataset("train", TrainConfig, "gest", PARAMS, over)
    assert (cfg.lr, cfg.epochs, cfg.augment.flip_p, cfg.augment.max_shift_px) == (0.5, 200, 0.5, 5)
    assert for_dataset("bin", BinConfig, "gest", PARAMS, over).dtype == "float32"
    assert for_dataset("train", TrainConfig, "gest", PARAMS, ["recipes.gest={}"]).lr == 0.1


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
        for_dataset("train", TrainConfig, "gest", PARAMS, over)


def test_repository_params_load():
    for name in ("digits_dvs", "dvs_gesture", "cifar10_dvs"):
        for_dataset("train", TrainConfig, name)
        for_dataset("bin", BinConfig, name)
    assert load_section("train", TrainConfig).method in ("baseline", "tsd", "ssd", "tssd")
