"""Each loss term against an independent formula (numpy), and the registry a method is a row of."""

import re

import numpy as np
import pytest
import torch

from okd_ray.errors import ConfigError
from okd_ray.methods import (
    METHODS,
    TERMS,
    Batch,
    CrossEntropy,
    EnsembleKL,
    FusedKL,
    MemberInfo,
    Need,
    PeerKL,
    RingKL,
    TeacherCE,
    TeacherKL,
    Term,
    TermSettings,
    ensemble_teacher,
    register_method,
)


def softmax(z, t=1.0):
    e = np.exp(z / t - (z / t).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def kl(student, teacher, t):
    """T² · batch mean of Σ p_teacher (log p_teacher − log p_student)."""
    p_t, p_s = softmax(teacher, t), softmax(student, t)
    return t * t * float(np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1)))


def ce(z, y):
    return float(np.mean(-np.log(softmax(z)[np.arange(len(y)), y])))


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(6, 5, generator=g, dtype=torch.float64) * 2 for _ in range(3)]


@pytest.fixture
def labels():
    return torch.tensor([0, 1, 2, 3, 4, 0])


def batch(logits, labels, index=0, **kw):
    own = logits[index].detach().clone().requires_grad_()
    return Batch(
        labels=labels,
        logits=own,
        feature=own,
        index=index,
        peer_logits={k: z for k, z in enumerate(logits) if k != index},
        **kw,
    )


def build(term, **settings):
    return term(term.Settings(**settings), MemberInfo(0, 3, None, torch.device("cpu")))


def test_ce_ring_kl_peer_kl_and_fused_kl(logits, labels):
    z = [t.numpy() for t in logits]
    b = batch(logits, labels, ring_logits=logits[2], fused_logits=logits[1])
    assert build(CrossEntropy).loss(b).item() == pytest.approx(ce(z[0], labels.numpy()))
    assert build(RingKL, temperature=3.0).loss(b).item() == pytest.approx(kl(z[0], z[2], 3.0))
    assert build(PeerKL, temperature=2.0).loss(b).item() == pytest.approx(
        (kl(z[0], z[1], 2.0) + kl(z[0], z[2], 2.0)) / 2
    )
    assert build(FusedKL, temperature=3.0).loss(b).item() == pytest.approx(kl(z[0], z[1], 3.0))


def kdcl_teacher_numpy(z, y, variant):
    """KDCL's teachers written out per sample (Guo et al., 2020)."""
    k, n, c = z.shape
    out = np.empty((n, c))
    for i in range(n):
        if variant == "minlogit":
            out[i] = np.min([z[m, i] - z[m, i, y[i]] for m in range(k)], axis=0)
        elif variant == "naive":
            losses = [-np.log(softmax(z[m, i : i + 1])[0, y[i]]) for m in range(k)]
            out[i] = z[int(np.argmin(losses)), i]
        else:
            out[i] = z[:, i].mean(0)
    return out


@pytest.mark.parametrize("variant", ["minlogit", "naive", "mean"])
def test_kdcl_teacher_and_loss(logits, labels, variant):
    z = np.stack([t.numpy() for t in logits])
    teacher = kdcl_teacher_numpy(z, labels.numpy(), variant)
    np.testing.assert_allclose(ensemble_teacher(logits, labels, variant).numpy(), teacher, rtol=1e-12)
    loss = build(EnsembleKL, variant=variant, temperature=3.0).loss(batch(logits, labels, index=1))
    assert loss.item() == pytest.approx(kl(z[1], teacher, 3.0))
    # the target class is the minimum logit's zero: MinLogit's teacher scores every label at 0
    if variant == "minlogit":
        assert np.allclose(teacher[np.arange(len(labels)), labels.numpy()], 0.0)


def test_kdcl_teacher_carries_no_gradient(logits, labels):
    peers = [t.clone().requires_grad_() for t in logits]
    b = batch(peers, labels, index=1)
    build(EnsembleKL).loss(b).backward()
    assert b.logits.grad is not None and b.logits.grad.abs().sum() > 0
    assert peers[0].grad is None and peers[2].grad is None


def test_one_teacher_terms_and_their_gradient_split(logits, labels):
    """ONE: CE(Σ g_k z_k) and KL(teacher → branch). Each branch's share of the teacher's gradient (its own
    logits and gate column) adds up, over the branches, to the one-graph gradient."""
    g = torch.Generator().manual_seed(1)
    gate = torch.softmax(torch.randn(6, 3, generator=g, dtype=torch.float64), 1)
    z = np.stack([t.numpy() for t in logits])
    teacher = (gate.numpy().T[:, :, None] * z).sum(0)
    gate_grads, logit_grads = [], []
    for k in range(3):
        b = batch(logits, labels, index=k, gate=gate.clone().requires_grad_())
        loss = build(TeacherCE).loss(b)
        assert loss.item() == pytest.approx(ce(teacher, labels.numpy()))
        loss.backward()
        gate_grads.append(b.gate.grad)
        logit_grads.append(b.logits.grad)
        assert (b.gate.grad[:, [j for j in range(3) if j != k]] == 0).all()
        assert build(TeacherKL, temperature=3.0).loss(
            batch(logits, labels, index=k, gate=gate)
        ).item() == pytest.approx(kl(z[k], teacher, 3.0))
    live_gate = gate.clone().requires_grad_()
    live = [t.clone().requires_grad_() for t in logits]
    torch.nn.functional.cross_entropy(sum(live_gate[:, k : k + 1] * live[k] for k in range(3)), labels).backward()
    torch.testing.assert_close(sum(gate_grads), live_gate.grad)
    for k in range(3):
        torch.testing.assert_close(logit_grads[k], live[k].grad)


def test_methods_are_rows_of_terms():
    assert [s.name for s in METHODS["afd+ffl"].terms] == ["ce", "ring_kl", "adversarial", "fused_kl"]
    assert METHODS["afd"].needs == {Need.RING_LOGITS, Need.RING_MAP}
    assert METHODS["dml"].needs == {Need.PEER_LOGITS} and METHODS["vanilla"].min_members == 1
    assert METHODS["l2"].terms[2].settings().norm == "l2"  # a row's defaults
    assert "discriminator" in METHODS["afd"].columns()


def test_registering_a_clashing_name_is_refused():
    class Other(Term):
        name = "ce"

        def loss(self, batch):
            return batch.logits.sum()

    # a plugin written before a built-in took its name (okddip.py and pcl_approx.py met it): the message says so
    built_in = "is okd-ray's built-in {} ({}); give yours another name (e.g. 'my_{}') and use that name in the config"
    with pytest.raises(ConfigError, match=re.escape(built_in.format("term", "okd_ray.methods.ce.CrossEntropy", "ce"))):
        register_method("clash", [Other])
    with pytest.raises(
        ConfigError, match=re.escape(built_in.format("method", "terms ce, ring_kl, adversarial", "afd"))
    ):
        register_method("afd", [CrossEntropy])
    assert TERMS["ce"] is CrossEntropy and "clash" not in METHODS


def test_a_wrong_default_in_a_row_fails_at_once():
    with pytest.raises(Exception, match="weight"):
        RingKL.configured(weight=-1)
    assert issubclass(RingKL.Settings, TermSettings)
