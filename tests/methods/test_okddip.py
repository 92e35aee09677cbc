"""OKDDip against its official code (DefangChen/OKDDip), written out here: the attention over peers, the targets
that are not detached, the group leader, and what the members learn from the attention part."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from okd_ray.config import load_config
from okd_ray.errors import ConfigError
from okd_ray.methods import AttentionKL
from okd_ray.population import plan_population

T, PEERS, B, C, D = 3.0, 3, 6, 10, 16


def official_kl(output_batch, teacher_outputs, temperature, eps):
    """utils.KL_Loss.forward (the official ``+ 10**(-7)`` is ``eps``)."""
    output_batch = F.log_softmax(output_batch / temperature, dim=1)
    teacher_outputs = F.softmax(teacher_outputs / temperature, dim=1) + eps
    return temperature * temperature * nn.KLDivLoss(reduction="batchmean")(output_batch, teacher_outputs)


def official_loss(x_3, logits, leader, query_weight, key_weight, weight, eps):
    """resnet_GL.ResNet.forward (after avgpool) and train_GL.train's distillation part, alpha · consistency."""
    proj_q = query_weight(x_3[0])[:, None, :]
    proj_k = key_weight(x_3[0])[:, None, :]
    pro = logits[0].unsqueeze(-1)
    for i in range(1, PEERS):
        proj_q = torch.cat([proj_q, query_weight(x_3[i])[:, None, :]], 1)
        proj_k = torch.cat([proj_k, key_weight(x_3[i])[:, None, :]], 1)
        pro = torch.cat([pro, logits[i].unsqueeze(-1)], -1)  # B x num_classes x num_branches
    energy = torch.bmm(proj_q, proj_k.permute(0, 2, 1))
    attention = F.softmax(energy, dim=-1)
    x_m = torch.bmm(pro, attention.permute(0, 2, 1))
    loss_group = sum(official_kl(pro[:, :, i], x_m[:, :, i], T, eps) for i in range(PEERS))
    return weight * (loss_group + official_kl(leader, torch.mean(pro, dim=2), T, eps))


# Without the official +1e-7 on the target softmax the two agree to float64 rounding; with it they differ by
# about T²·1e-7·Σ_classes |log p_student| per KL (4 KLs here), which the second case bounds.
@pytest.mark.parametrize("eps, tolerance", [(0.0, 1e-12), (1e-7, 1e-4)])
def test_the_attention_part_matches_the_official_loss_and_gradients(eps, tolerance):
    torch.manual_seed(0)
    attention = AttentionKL.fuser(AttentionKL.Settings(factor=4), [(D, 2, 2)] * (PEERS + 1), C)
    attention.query.double(), attention.key.double()
    maps = [torch.randn(B, D, 2, 2, dtype=torch.float64, requires_grad=True) for _ in range(PEERS + 1)]
    logits = [torch.randn(B, C, dtype=torch.float64, requires_grad=True) for _ in range(PEERS + 1)]
    out = attention.loss(maps, logits, torch.zeros(B, dtype=torch.long), 0.7)
    ours = torch.autograd.grad(
        out.total, [*maps[:PEERS], *logits, *attention.query.parameters(), *attention.key.parameters()]
    )
    pooled = [F.adaptive_avg_pool2d(m, 1).view(B, -1) for m in maps[:PEERS]]  # the official avgpool and view
    reference = official_loss(pooled, logits[:PEERS], logits[PEERS], attention.query, attention.key, 0.7, eps)
    theirs = torch.autograd.grad(
        reference, [*maps[:PEERS], *logits, *attention.query.parameters(), *attention.key.parameters()]
    )
    assert abs((out.total - reference).item()) < tolerance
    assert all(torch.allclose(a, b, atol=tolerance, rtol=0) for a, b in zip(ours, theirs))
    assert all(g.abs().sum() > 0 for g in theirs)  # the targets are not detached: every peer, both projections
    assert out.to_members[PEERS].shape == (B, C) and out.fused is None


def test_okddip_needs_two_peers_and_the_leader_and_peers_of_one_architecture():
    tiny = ["epochs=1", "data.train_limit=64", "data.test_limit=32", "method.name=okddip"]
    with pytest.raises(ConfigError, match="okddip needs at least 3 members"):
        plan_population(load_config(None, [*tiny, "members=[cnn16, cnn16]"]))
    with pytest.raises(ConfigError, match="need one architecture"):
        plan_population(load_config(None, [*tiny, "members=[cnn16, cnn32, cnn16]"]))
    plan_population(load_config(None, [*tiny, "members=[cnn16, cnn16, cnn32]"]))  # the leader may differ
