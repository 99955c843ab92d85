"""The Launchpad's config classes are the domain dataclasses field by field: same names, same defaults."""

from dataclasses import fields

import pytest

from assets.multiregion import MultiRegionTrainingConfig, RegionEvaluationConfig, region_train_config
from assets.training import SamplesConfig, TrainingConfig
from loc2vec.data.samples import SplitSpec
from loc2vec.errors import ConfigError
from loc2vec.training.config import RECIPE_STEPS_PER_REGION, TRANSFER_RECIPE, TrainConfig, transfer_recipe


def _defaults(dataclass_type, leave_out=()) -> dict:
    return {f.name: f.default for f in fields(dataclass_type) if f.name not in leave_out}


def _config_defaults(config_type) -> dict:
    return {name: field.default for name, field in config_type.model_fields.items()}


def test_samples_config_is_the_split_spec():
    assert _config_defaults(SamplesConfig) == _defaults(SplitSpec)


def test_training_config_is_the_train_config_but_the_crop_size():
    # the crop size is the split's (sample_locations.crop_px): one value for the leak buffer and training
    assert _config_defaults(TrainingConfig) == _defaults(TrainConfig, leave_out=("crop_px",))


def test_multi_region_training_defaults_to_the_transfer_recipe():
    defaults = _config_defaults(MultiRegionTrainingConfig)
    assert (defaults.pop("regions"), defaults.pop("weights")) == ([], {})  # every region with a split, catalog weights
    assert defaults.pop("steps_per_epoch") is None  # the recipe's batches per epoch for each region trained on
    assert defaults == {**_defaults(TrainConfig, leave_out=("crop_px", "steps_per_epoch")), **TRANSFER_RECIPE}


def test_the_recipe_trains_as_many_batches_per_region_as_a_model_of_one_region():
    assert transfer_recipe().steps_per_epoch == TrainConfig().steps_per_epoch == RECIPE_STEPS_PER_REGION
    assert transfer_recipe(4).steps_per_epoch == 4 * RECIPE_STEPS_PER_REGION
    assert transfer_recipe(4).digest() != transfer_recipe(1).digest()
    with pytest.raises(ConfigError, match="at least one region"):
        transfer_recipe(0)


def test_the_multi_region_asset_trains_the_recipes_batches_for_each_region_unless_told():
    assert region_train_config(MultiRegionTrainingConfig(), 3, 128).steps_per_epoch == 3 * RECIPE_STEPS_PER_REGION
    assert region_train_config(MultiRegionTrainingConfig(steps_per_epoch=7), 3, 128).steps_per_epoch == 7
    assert region_train_config(MultiRegionTrainingConfig(), 3, 96).crop_px == 96


def test_every_config_field_is_described_for_the_launchpad():
    for config_type in (SamplesConfig, TrainingConfig, MultiRegionTrainingConfig, RegionEvaluationConfig):
        missing = [name for name, field in config_type.model_fields.items() if not field.description]
        assert not missing, f"{config_type.__name__}: {missing}"
