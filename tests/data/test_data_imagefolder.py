"""ImageNet-style trees: seeded augmentation that neither workers nor the global RNG change."""

import numpy as np
import pytest
import torch
from PIL import Image

from okd_ray.data import DataInfo, build_dataset
from okd_ray.errors import DataError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/{train,val}/{cat,dog}/*.png with 40x40 random images."""
    root, rng = tmp_path_factory.mktemp("tree"), np.random.default_rng(0)
    for split, count in [("train", 5), ("val", 2)]:
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def build(root, **kw):
    return build_dataset("imagefolder", root=str(root), batch_size=4, image_size=16, **kw)


def test_shapes_and_labels(tree):
    data = build(tree, test_batch_size=3)
    assert data.info == DataInfo("imagefolder", in_channels=3, num_classes=2, image_size=16)
    assert data.num_train_batches() == 3
    batches = list(data.train_batches(0))
    assert [len(y) for _, y, _ in batches] == [4, 4, 2]
    x, y, _ = batches[0]
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sorted(torch.cat([y for _, y, _ in batches]).tolist()) == [0] * 5 + [1] * 5
    assert [y.tolist() for _, y in data.eval_batches("test")] == [[0, 0, 1], [1]]


def test_seeded_across_builds_and_workers_without_touching_the_global_rng(tree):
    state = torch.random.get_rng_state()
    a, b = build(tree, seed=7), build(tree, seed=7, num_workers=1)
    for epoch in (0, 1):
        for (xa, ya, _), (xb, yb, _) in zip(a.train_batches(epoch), b.train_batches(epoch), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(state, torch.random.get_rng_state())
    first = next(a.train_batches(0))[0]
    assert not torch.equal(first, next(a.train_batches(1))[0])
    assert not torch.equal(first, next(build(tree, seed=8).train_batches(0))[0])


def test_test_batches_are_not_augmented(tree):
    a, b = build(tree, seed=1), build(tree, seed=2, augment=False)
    for (xa, _), (xb, _) in zip(a.eval_batches("test"), b.eval_batches("test"), strict=True):
        assert torch.equal(xa, xb)
    # Without augmentation, training images get the test transform (resize + centre crop).
    x_plain = torch.cat([x for x, _, _ in build(tree, augment=False, train_limit=4).train_batches(0)])
    x_aug = torch.cat([x for x, _, _ in build(tree, train_limit=4).train_batches(0)])
    assert not torch.equal(x_plain, x_aug)


def test_limits(tree):
    data = build(tree, train_limit=3, test_limit=1)
    assert data.num_train_batches() == 1
    assert sum(len(y) for _, y, _ in data.train_batches(0)) == 3
    assert sum(len(y) for _, y in data.eval_batches("test")) == 1


def test_missing_tree_names_the_layout(tmp_path):
    for root in (None, tmp_path):
        with pytest.raises(DataError, match=r"train/<class>/<image>"):
            build_dataset("imagefolder", root=root)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=str(tmp_path / "val")):
        build_dataset("imagefolder", root=tmp_path)


def test_val_classes_must_match_train(tree, tmp_path):
    for split, names in [("train", ["cat", "dog"]), ("val", ["dog"])]:
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "0.png")
    with pytest.raises(DataError, match="same class"):
        build_dataset("imagefolder", root=tmp_path)


def test_validation_split_is_held_out_of_train_and_val_stays_the_test_set(tree, check_validation_split):
    check_validation_split(lambda **kw: build(tree, validation=4, **kw), 10, 4)
    data = build(tree, validation=4, test_batch_size=8)
    assert [y.tolist() for _, y in data.eval_batches("test")] == [[0, 0, 1, 1]]
