"""A method of your own that uses the member's input, its network and a message to its peers: every member keeps
a temporal-mean (EMA) copy of its network, runs it on its own input and sends the copy's logits to every peer;
each member distils from the mean of its peers' mean teachers (the peer mean teachers of PCL, Wu & Gong, AAAI
2021, as a plugin).

    okd-ray train plugins=[experiments/plugins/peer_mean_teacher.py] method.name=peer-mean-teacher
"""

import copy

import torch
from pydantic import Field

from okd_ray.methods import CrossEntropy, Need, Term, TermSettings, distill_kl, register_method


class PeerMeanTeacher(Term):
    name = "peer_mean_teacher"  # its config key (method.terms.peer_mean_teacher.decay) and its metrics column
    needs = frozenset({Need.PEER_MESSAGES})  # what the peers' to_peers sent arrives in batch.peer_messages

    class Settings(TermSettings):
        decay: float = Field(0.999, ge=0, lt=1)  # the EMA's: teacher = decay * teacher + (1 - decay) * network
        temperature: float = Field(3.0, gt=0)

    def __init__(self, settings, member):
        super().__init__(settings, member)
        # Built under the member's RNG after its network: the copy starts from the same weights on every engine.
        self.network = member.network
        self.teacher = copy.deepcopy(member.network).requires_grad_(False)  # no gradient: not trained by a loss

    def modules(self):
        return {"mean_teacher": self.teacher}  # in the member's checkpoint, switched to eval for testing

    def to_peers(self, batch):
        with torch.no_grad():
            return self.teacher(batch.input)[1]  # its logits on this member's input

    def loss(self, batch):
        teachers = torch.stack([sent[self.name] for sent in batch.peer_messages.values()]).mean(0)
        return distill_kl(batch.logits, teachers, self.settings.temperature)

    def after_update(self, batch):
        """After the member's step, the teacher moves toward the network."""
        with torch.no_grad():
            for mean, live in zip(self.teacher.parameters(), self.network.parameters()):
                mean.lerp_(live, 1 - self.settings.decay)
        return {}


register_method("peer-mean-teacher", [CrossEntropy, PeerMeanTeacher])
