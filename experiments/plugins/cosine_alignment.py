"""A method of your own, without editing okd-ray: align each member's map to its ring predecessor's by angle.

okd-ray train plugins=[experiments/plugins/cosine_alignment.py] method.name=cosine
"""

import torch.nn.functional as F

from okd_ray.methods import CrossEntropy, Need, RingKL, Term, register_method


class CosineAlign(Term):
    name = "cosine_align"  # its config key (method.terms.cosine_align.weight) and its metrics column
    update = "feature"  # stepped with the feature-map update, like AFD's adversarial term
    needs = frozenset({Need.RING_MAP})  # the ring predecessor's public map arrives as batch.ring_map

    def loss(self, batch):
        own, peer = batch.public.flatten(1), batch.ring_map.flatten(1)
        return (1 - F.cosine_similarity(own, peer, dim=1)).mean()


register_method("cosine", [CrossEntropy, RingKL, CosineAlign])
