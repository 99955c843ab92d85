"""The Launchpad's config classes are the domain dataclasses field by field: same names, same defaults."""

from dataclasses import fields

from assets.multiregion import MultiRegionTrainingConfig, RegionEvaluationConfig
from assets.training import SamplesConfig, TrainingConfig
from loc2vec.data.samples import SplitSpec
from loc2vec.training.config import TRANSFER_RECIPE, TrainConfig


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
    assert defaults == {**_defaults(TrainConfig, leave_out=("crop_px",)), **TRANSFER_RECIPE}


def test_every_config_field_is_described_for_the_launchpad():
    for config_type in (SamplesConfig, TrainingConfig, MultiRegionTrainingConfig, RegionEvaluationConfig):
        missing = [name for name, field in config_type.model_fields.items() if not field.description]
        assert not missing, f"{config_type.__name__}: {missing}"
