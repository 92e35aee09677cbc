"""Mixed precision (``precision: bf16 | fp16``): both learn; fp16's loss scale is each part's own, is saved in its
checkpoint, and never reaches another part. (bf16 on both engines, bit for bit: tests/engines/test_ray.py.)"""

import pytest
import torch

from okd_ray.engines.local import LocalEngine
from okd_ray.population import plan_population
from okd_ray.run import train


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_learns_digits(tiny_config, precision):
    result = train(tiny_config("method.name=afd+ffl", "data.train_limit=384", f"precision={precision}"), quiet=True)
    final = result.final()
    for part in ("m0:cnn16", "m1:cnn32", "ensemble", "fused"):
        assert final[part]["test_top1"] > 50.0, (part, final[part])  # chance is 10 %
    assert all(v == v for r in result.rows for k, v in r.items() if isinstance(v, float)), "a NaN"


def test_fp16_keeps_a_loss_scale_per_part_in_its_checkpoint(tiny_config, population_state):
    """(A resumed fp16 run ends as an uninterrupted one: tests/engines/test_local.py.)"""
    run = train(tiny_config("method.name=afd+ffl", "precision=fp16", "epochs=1"), quiet=True)
    scales = {k: float(v) for k, v in population_state(run.run_dir).items() if k.endswith("precision.scale.")}
    assert list(scales) == ["m0.precision.scale.", "m1.precision.scale.", "fused.precision.scale."], scales
    assert all(s > 1 for s in scales.values())


def one_step_messages(config):
    """The fusion's gradients on each member's map and each member's on the trunk's features, of one FFL step.
    Every fp16 part's scale grows after every step (GradScaler's growth interval 1 instead of 2000), so a gradient
    unscaled with the next step's scale would arrive halved."""
    engine = LocalEngine(config, plan_population(config))
    for part in engine.parts:
        if part.precision.scaler is not None:
            part.precision.scaler._growth_interval = 1  # no public setter; GradScaler(growth_interval=1) would be
    engine.begin_epoch(0)
    trunk, members, fusion = engine.population.trunk, engine.population.members, engine.population.fusion
    shared = trunk.forward().shared
    sent = [m.forward(shared[k]) for k, m in enumerate(members)]
    _, fused = fusion.step(*(s.to_fusion for s in sent))
    to_trunk = [m.update(None, fused[k]).to_trunk for k, m in enumerate(members)]
    return [f.feature_grad for f in fused] + [g.features for g in to_trunk]


def test_fp16_gradients_cross_parts_unscaled(tiny_config):
    """fp16 scales each part's loss by 65536; what one part sends another must be the plain gradient (fp32, so
    that small values survive), as fp32 sends it."""
    ffl_on_a_trunk = ["method.name=ffl", "members=[resnet8, resnet8]", "trunk_stages=2", "threads=1"]
    half = one_step_messages(tiny_config(*ffl_on_a_trunk, "precision=fp16"))
    full = one_step_messages(tiny_config(*ffl_on_a_trunk))
    for a, b in zip(half, full):
        assert a.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cosine > 0.99 and 0.9 < a.norm() / b.norm() < 1.1, (float(cosine), float(a.norm() / b.norm()))
