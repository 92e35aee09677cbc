"""Fashion-MNIST from IDX files: Debian's folder, a root of plain or gzipped files, torchvision's layout."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from okd_ray.data import DataInfo, build_dataset, fashion_mnist
from okd_ray.errors import DataError

MEAN, STD = 0.2860, 0.3530


def write_idx(path, array, compress):
    payload = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def write_fashion(folder, compress, n_train=12, n_test=6):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(folder / name, array, compress)
    return arrays


def to_pixels(x):
    return ((x * STD + MEAN) * 255).round().to(torch.uint8)


@pytest.mark.skipif(
    not fashion_mnist.DEBIAN_DIR.is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_reads_the_debian_package(tmp_path):
    data = build_dataset("fashion-mnist", root=tmp_path, batch_size=64, train_limit=200, test_limit=100)
    assert data.info == DataInfo("fashion-mnist", in_channels=1, num_classes=10, image_size=28)
    assert data.num_train_batches() == 4
    x, y = torch.cat([x for x, _ in data.eval_batches("test")]), torch.cat([y for _, y in data.eval_batches("test")])
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the t10k set's published first labels
    assert abs(x.mean().item()) < 0.2 and abs(x.std().item() - 1) < 0.2


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("subfolder", [".", "FashionMNIST/raw"])
def test_reads_a_root_of_idx_files(tmp_path, compress, subfolder):
    arrays = write_fashion(tmp_path / subfolder, compress)
    data = build_dataset("fashion-mnist", root=str(tmp_path), batch_size=5, test_batch_size=5, augment=False)
    assert data.num_train_batches() == 3
    x, y = next(iter(data.eval_batches("test")))
    assert torch.equal(to_pixels(x)[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"][:5]))
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte"][:5].tolist()
    train_labels = torch.cat([y for _, y, _ in data.train_batches(0)])
    assert sorted(train_labels.tolist()) == sorted(arrays["train-labels-idx1-ubyte"].tolist())


def test_augmentation_pads_with_zeros_and_is_seeded(tmp_path):
    write_fashion(tmp_path, compress=True, n_train=40)
    plain = build_dataset("fashion-mnist", root=tmp_path, batch_size=40, seed=5, augment=False)
    a = build_dataset("fashion-mnist", root=tmp_path, batch_size=40, seed=5)
    b = build_dataset("fashion-mnist", root=tmp_path, batch_size=40, seed=5)
    (xp, yp, _), (xa, ya, _), (xb, _, _) = (
        next(plain.train_batches(0)),
        next(a.train_batches(0)),
        next(b.train_batches(0)),
    )
    assert torch.equal(yp, ya) and not torch.equal(xp, xa) and torch.equal(xa, xb)
    assert (to_pixels(xa) == 0).sum() > (to_pixels(xp) == 0).sum()  # the zero border shows in some crops


def test_missing_files_list_every_folder_and_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian-package")
    with pytest.raises(DataError) as error:
        build_dataset("fashion-mnist", root=tmp_path)
    message = str(error.value)
    for folder in (tmp_path, tmp_path / "FashionMNIST" / "raw", tmp_path / "no-debian-package"):
        assert f"  {folder}\n" in message + "\n"
    assert "apt-get install dataset-fashion-mnist" in message
    assert "data.download=true" in message and "data.root" in message


def test_a_corrupt_file_is_named(tmp_path):
    write_fashion(tmp_path, compress=False)
    Path(tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        build_dataset("fashion-mnist", root=tmp_path)


def test_validation_split(tmp_path, check_validation_split):
    write_fashion(tmp_path, compress=True, n_train=200)
    check_validation_split(lambda **kw: build_dataset("fashion-mnist", root=tmp_path, validation=0.2, **kw), 200, 40)
