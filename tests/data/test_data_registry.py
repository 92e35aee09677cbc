"""build_dataset: names, and errors that say what to change."""

import pytest

from okd_ray.data import DATASETS, build_dataset, digits, register_dataset
from okd_ray.errors import ConfigError, DataError


def test_registry_names():
    """The built-in ones first; a plugin's follow (tests/test_plugins.py registers one)."""
    assert list(DATASETS)[:6] == ["digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic-cifar100"]


def test_a_name_stands_for_one_builder():
    register_dataset("digits", digits.build)  # the same builder again: a plugin imported twice
    with pytest.raises(
        ConfigError, match=r"data set 'digits' is okd-ray's built-in data set \(okd_ray.data.digits.build\)"
    ):
        register_dataset("digits", lambda config, seed: None)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(DataError) as error:
        build_dataset("mnist")
    assert "'mnist'" in str(error.value)
    for name in DATASETS:
        assert name in str(error.value)


@pytest.mark.parametrize(
    "key, value",
    [("batch_size", 0), ("test_batch_size", -1), ("train_limit", 0), ("test_limit", 1.5), ("num_workers", -1)],
)
def test_bad_sizes_name_the_key(key, value):
    with pytest.raises(DataError, match=f"data.{key}"):
        build_dataset("digits", **{key: value})


def test_image_size_is_fixed_for_in_memory_sets():
    assert build_dataset("digits", image_size=8).info.image_size == 8
    with pytest.raises(DataError, match="8x8"):
        build_dataset("digits", image_size=32)
