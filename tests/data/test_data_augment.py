"""PadCropFlip returns real crops of the padded image, possibly mirrored."""

import torch
import torch.nn.functional as F

from okd_ray.data.augment import PadCropFlip
from okd_ray.seeding import generator


def test_every_output_is_a_crop_of_the_padded_image():
    images = torch.rand(16, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    for mode in ("constant", "reflect"):
        out = PadCropFlip(pad=2, mode=mode)(images, generator("test"))
        assert out.shape == images.shape
        padded = F.pad(images, [2] * 4, mode=mode)
        for i in range(len(images)):
            windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
            windows += [w.flip(-1) for w in windows]
            assert any(torch.equal(out[i], w) for w in windows)


def test_same_generator_seed_same_output():
    images = torch.rand(8, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    aug = PadCropFlip(pad=1)
    assert torch.equal(aug(images, generator(1, 2)), aug(images, generator(1, 2)))
    assert not torch.equal(aug(images, generator(1, 2)), aug(images, generator(2, 1)))
