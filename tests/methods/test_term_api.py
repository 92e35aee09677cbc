"""What a term can reach (issue 17's limits), each against what the population really computed: the member's
input, network and context; every peer's map and its terms' own messages; its own parameters trained in every
feature-update mode; a teacher that learns; the refusals found while the run is planned."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from okd_ray.config import load_config
from okd_ray.engines.local import LocalEngine
from okd_ray.errors import ConfigError
from okd_ray.methods import CrossEntropy, Need, Term, distill_kl, register_method
from okd_ray.population import load_dataset, plan_population
from okd_ray.seeding import derive_seed

TINY = ["epochs=1", "data.train_limit=64", "data.test_limit=32", "data.batch_size=16", "threads=1"]


class Probe(Term):
    """Keeps what it was built with and what every step showed it; sends its peers its index and its logits."""

    name = "probe"
    needs = frozenset({Need.PEER_MAPS, Need.PEER_MESSAGES, Need.RING_MAP})

    def __init__(self, settings, member):
        super().__init__(settings, member)
        self.member, self.seen, self.sent = member, [], []

    def to_peers(self, batch):
        message = {"index": torch.tensor([batch.index]), "logits": batch.logits}
        self.sent.append({"logits": batch.logits.detach().clone(), "public": batch.public.detach().clone()})
        return message

    def loss(self, batch):
        self.seen.append(batch)
        return batch.logits.sum() * 0


register_method("probe", [CrossEntropy, Probe])


def engine(*overrides):
    config = load_config(None, [*TINY, *overrides])
    return LocalEngine(config, plan_population(config)), config


def probes(local):
    return [next(t for t in member.terms if t.name == "probe") for member in local.population.members]


def test_a_term_sees_its_members_input_network_and_context():
    local, config = engine("method.name=probe", "members=[cnn16, cnn32, cnn16]")
    local.begin_epoch(0)
    local.train_epoch(2, lambda: None)
    x, _, ids = next(iter(load_dataset(config.data, config.seed).train_batches(0, None)))
    for k, (probe, part) in enumerate(zip(probes(local), local.parts)):
        info = probe.member
        assert info.network is part.net and info.num_classes == 10 and info.count == 3
        assert info.feature_shape == local.plan.shapes[k] and info.seed == derive_seed(config.seed, "terms", k)
        first, second = probe.seen
        assert torch.equal(first.input, x) and torch.equal(first.ids, ids)  # the very images it ran on, and theirs
        assert (first.epoch, first.step, second.step) == (0, 0, 1)
        assert first.weights == {"ce": 1.0, "probe": 1.0}
    assert len({p.member.seed for p in probes(local)}) == 3


def test_members_on_a_trunk_see_the_ids_of_the_trunks_batch():
    local, config = engine("method.name=probe", "members=[resnet8, resnet8, resnet8]", "trunk_stages=2")
    local.begin_epoch(0)
    local.train_epoch(1, lambda: None)
    _, _, ids = next(iter(load_dataset(config.data, config.seed).train_batches(0, None)))
    assert all(torch.equal(p.seen[0].ids, ids) for p in probes(local))


def test_every_peer_map_and_every_peers_message_arrive_as_sent():
    local, _ = engine("method.name=probe", "members=[cnn16, cnn32, cnn16]")
    local.begin_epoch(0)
    local.train_epoch(2, lambda: None)
    sent = [p.sent for p in probes(local)]
    for k, probe in enumerate(probes(local)):
        for step, batch in enumerate(probe.seen):
            assert sorted(batch.peer_maps) == sorted(batch.peer_messages) == [j for j in range(3) if j != k]
            for j, message in batch.peer_messages.items():
                assert torch.equal(batch.peer_maps[j], sent[j][step]["public"])  # the ring's common shape
                assert int(message["probe"]["index"]) == j
                assert torch.equal(message["probe"]["logits"], sent[j][step]["logits"])
                assert not message["probe"]["logits"].requires_grad  # it left its member detached
            assert torch.equal(batch.ring_map, sent[k - 1][step]["public"])


class Hint(Term):
    """A FitNets-style hint: a learned regressor from the member's map to its ring predecessor's, trained by the
    member's own optimizer (the term has none)."""

    name = "hint"
    update = "feature"
    needs = frozenset({Need.RING_MAP})

    def __init__(self, settings, member):
        super().__init__(settings, member)
        channels = member.public_shape[0]
        self.regressor = nn.Conv2d(channels, channels, 1).to(member.device)

    def modules(self):
        return {"regressor": self.regressor}

    def loss(self, batch):
        return F.mse_loss(self.regressor(batch.public), batch.ring_map)


register_method("hint", [CrossEntropy, Hint])


@pytest.mark.parametrize("mode, optimizer", [("alternating", "feature"), ("sequential", "feature"), ("joint", "logit")])
def test_a_terms_own_parameters_learn_with_the_member_in_every_update_mode(mode, optimizer):
    local, _ = engine("method.name=hint", f"method.feature_update.mode={mode}")
    member = local.parts[0]
    regressor = member.modules["regressor"]
    before = {k: v.clone() for k, v in regressor.state_dict().items()}
    local.begin_epoch(0)
    local.train_epoch(1, lambda: None)
    assert all(not torch.equal(before[k], v) for k, v in regressor.state_dict().items()), mode
    stepped = {id(p) for g in member.optimizers[optimizer].optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in regressor.parameters()} <= stepped
    assert "regressor" in member.state_dict()["modules"]  # and in the checkpoint


def test_a_teacher_may_learn_from_the_distillation_loss():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    distill_kl(student, teacher, 3.0, detach_teacher=False).backward()
    # independently: T² · Σ p_t (log p_t − log p_s) / N, differentiated by autograd
    reference = teacher.detach().requires_grad_()
    p_t = F.softmax(reference / 3, 1)
    (9 * (p_t * (F.log_softmax(reference / 3, 1) - F.log_softmax(student.detach() / 3, 1))).sum(1).mean()).backward()
    assert torch.allclose(teacher.grad, reference.grad, atol=1e-7) and teacher.grad.abs().sum() > 0
    fixed = teacher.detach().requires_grad_()
    distill_kl(student, fixed, 3.0).backward()  # the default: the teacher is a target
    assert fixed.grad is None


class WantsFusion(Term):
    name = "wants_fusion"
    needs = frozenset({Need.FUSION})

    def loss(self, batch):
        return batch.logits.sum() * 0


register_method("wants-fusion", [CrossEntropy, WantsFusion])


def test_a_term_needing_the_fusion_without_a_term_that_brings_one_is_an_error_naming_it():
    config = load_config(None, [*TINY, "method.name=wants-fusion"])
    with pytest.raises(
        ConfigError,
        match=r"terms \['wants_fusion'\] need Need.FUSION and terms \[\] bring a fusion "
        r"part \(Term.fuser\); give the method exactly one term that brings it",
    ):
        plan_population(config)


class StageHint(Term):
    """Reads a middle stage's map through a forward hook on the member's network (FitNets' hint layer)."""

    name = "stage_hint"

    def __init__(self, settings, member):
        super().__init__(settings, member)
        self.caught = []
        member.network.stages[0].register_forward_hook(lambda module, inputs, output: self.caught.append(output))

    def loss(self, batch):
        return self.caught[-1].pow(2).mean()


register_method("stage-hint", [CrossEntropy, StageHint])


def test_a_term_reads_a_middle_stages_map_through_a_hook_on_its_members_network():
    local, _ = engine("method.name=stage-hint")
    local.begin_epoch(0)
    member = local.parts[0]
    member.forward()
    term, x = member.terms[1], member._own.input
    with torch.no_grad():  # independently: the stem and the first stage on the same input, the same weights
        expected = member.net.stages[0](member.net.stem(x))
    assert torch.equal(term.caught[0], expected) and term.caught[0].requires_grad
