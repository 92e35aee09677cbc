"""CIFAR-10/100 from small files in the real pickle layout: pixels round-trip, augmentation, errors."""

import pickle

import numpy as np
import pytest
import torch

from okd_ray.data import DataInfo, build_dataset
from okd_ray.data.cifar import CIFAR10, CIFAR100
from okd_ray.errors import DataError

PER_BATCH = 20


def random_batch(rng, n, num_classes, label_key):
    return {
        b"batch_label": b"test batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key.encode(): rng.integers(0, num_classes, n).tolist(),
    }


def write_cifar10(root, seed=0):
    """Five training batches, a test batch and the meta file, as in cifar-10-python.tar.gz."""
    rng, folder = np.random.default_rng(seed), root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": random_batch(rng, PER_BATCH, 10, "labels") for i in range(1, 6)}
    batches["test_batch"] = random_batch(rng, PER_BATCH, 10, "labels")
    batches["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    for name, content in batches.items():
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    return batches


def write_cifar100(root, seed=0):
    rng, folder = np.random.default_rng(seed), root / "cifar-100-python"
    folder.mkdir(parents=True)
    batches = {
        "train": random_batch(rng, 2 * PER_BATCH, 100, "fine_labels"),
        "test": random_batch(rng, PER_BATCH, 100, "fine_labels"),
        "meta": {b"fine_label_names": [f"c{i}".encode() for i in range(100)]},
    }
    for name, content in batches.items():
        (folder / name).write_bytes(pickle.dumps(content))
    return batches


def to_pixels(x, layout):
    """Undo the normalisation: back to the uint8 values that were written."""
    mean = torch.tensor(layout.mean).view(1, 3, 1, 1)
    std = torch.tensor(layout.std).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def images_by_content(batches, files, label_key):
    return {
        bytes(image): label
        for f in files
        for image, label in zip(batches[f][b"data"], batches[f][label_key.encode()], strict=True)
    }


def test_cifar10_pixels_and_labels_round_trip(tmp_path):
    written = write_cifar10(tmp_path)
    data = build_dataset("cifar10", root=str(tmp_path), batch_size=16, test_batch_size=16, augment=False)
    assert data.info == DataInfo("cifar10", in_channels=3, num_classes=10, image_size=32)
    assert data.num_train_batches() == 7  # 100 images
    x, y = next(iter(data.eval_batches("test")))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    expected = torch.from_numpy(written["test_batch"][b"data"][:16]).view(16, 3, 32, 32)
    assert torch.equal(to_pixels(x, CIFAR10), expected)
    assert y.tolist() == written["test_batch"][b"labels"][:16]
    # Shuffled training images are whole images of the training files, with their own labels.
    train = images_by_content(written, [f"data_batch_{i}" for i in range(1, 6)], "labels")
    seen = []
    for x, y, _ in data.train_batches(0):
        for image, label in zip(to_pixels(x, CIFAR10), y.tolist(), strict=True):
            assert train[image.numpy().tobytes()] == label
            seen.append(image.numpy().tobytes())
    assert sorted(seen) == sorted(train)


def test_cifar100_reads_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    data = build_dataset("cifar100", root=tmp_path, batch_size=8, augment=False, test_limit=10)
    assert data.info.num_classes == 100
    x, y = torch.cat([x for x, _ in data.eval_batches("test")]), torch.cat([y for _, y in data.eval_batches("test")])
    assert len(y) == 10 and y.tolist() == written["test"][b"fine_labels"][:10]
    expected = torch.from_numpy(written["test"][b"data"][:10]).view(10, 3, 32, 32)
    assert torch.equal(to_pixels(x, CIFAR100), expected)
    assert sum(len(y) for _, y, _ in data.train_batches(0)) == 2 * PER_BATCH


def test_augmentation_is_applied_to_train_batches_only(tmp_path):
    write_cifar10(tmp_path)
    plain = build_dataset("cifar10", root=tmp_path, batch_size=32, augment=False)
    augmented = build_dataset("cifar10", root=tmp_path, batch_size=32, augment=True)
    (xp, yp, _), (xa, ya, _) = next(plain.train_batches(0)), next(augmented.train_batches(0))
    assert torch.equal(yp, ya)  # same order: augmentation does not shift the sample stream
    assert not torch.equal(xp, xa)
    for (tp, _), (ta, _) in zip(plain.eval_batches("test"), augmented.eval_batches("test"), strict=True):
        assert torch.equal(tp, ta)


def test_augmented_batches_are_seeded(tmp_path):
    write_cifar10(tmp_path)
    state = torch.random.get_rng_state()
    a = build_dataset("cifar10", root=tmp_path, batch_size=32, seed=1)
    b = build_dataset("cifar10", root=tmp_path, batch_size=32, seed=1)
    for epoch in (0, 1):
        for (xa, ya, _), (xb, yb, _) in zip(a.train_batches(epoch), b.train_batches(epoch), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(next(a.train_batches(0))[0], next(a.train_batches(1))[0])
    other = build_dataset("cifar10", root=tmp_path, batch_size=32, seed=2)
    assert not torch.equal(next(a.train_batches(0))[0], next(other.train_batches(0))[0])
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_files_say_where_we_looked(tmp_path, name, folder):
    with pytest.raises(DataError) as error:
        build_dataset(name, root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / folder) in message
    assert "data.download=true" in message and "data.root" in message


def test_pickles_that_would_run_code_are_refused(tmp_path):
    write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="test_batch"):
        build_dataset("cifar10", root=tmp_path)


def test_labels_out_of_range_are_refused(tmp_path):
    written = write_cifar10(tmp_path)
    written["test_batch"][b"labels"][0] = 10
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(written["test_batch"]))
    with pytest.raises(DataError, match=r"0\.\.9"):
        build_dataset("cifar10", root=tmp_path)


def test_validation_split(tmp_path, check_validation_split):
    """Held out of the five training batches; CIFAR-100 reads through the same code."""
    write_cifar10(tmp_path)
    check_validation_split(lambda **kw: build_dataset("cifar10", root=tmp_path, validation=30, **kw), 5 * PER_BATCH, 30)
