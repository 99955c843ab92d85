"""The Launchpad's config classes are the domain dataclasses field by field: same names, same defaults."""

from dataclasses import fields

from assets.training import SamplesConfig, TrainingConfig
from loc2vec.data.samples import SplitSpec
from loc2vec.training.config import TrainConfig


def _defaults(dataclass_type, leave_out=()) -> dict:
    return {f.name: f.default for f in fields(dataclass_type) if f.name not in leave_out}


def _config_defaults(config_type) -> dict:
    return {name: field.default for name, field in config_type.model_fields.items()}


def test_samples_config_is_the_split_spec():
    assert _config_defaults(SamplesConfig) == _defaults(SplitSpec)


def test_training_config_is_the_train_config_but_the_crop_size():
    # the crop size is the split's (sample_locations.crop_px): one value for the leak buffer and training
    assert _config_defaults(TrainingConfig) == _defaults(TrainConfig, leave_out=("crop_px",))


def test_every_config_field_is_described_for_the_launchpad():
    for config_type in (SamplesConfig, TrainingConfig):
        missing = [name for name, field in config_type.model_fields.items() if not field.description]
        assert not missing, f"{config_type.__name__}: {missing}"
