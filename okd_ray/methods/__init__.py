"""The methods: loss terms (one small module each) and the table of methods, each a row of terms.

Adding a method means a term module and one row here (or ``register_method`` from a plugin); the
population step, the engines, the metrics and the tables follow from the registries.
"""

from .adversarial import Adversarial, Discriminator, discriminator_loss, generator_loss
from .alignment import Align, alignment_loss
from .ce import CrossEntropy
from .fused_kl import FusedKL
from .fusion import FusionModule
from .kdcl import EnsembleKL, ensemble_teacher
from .kl import distill_kl
from .okddip import AttentionKL, PeerAttention, peer_targets
from .one import Gate, TeacherCE, TeacherKL, gated_teacher
from .pcl import PeerEnsemble, PeerEnsembleKL, PeerMeanKL, ema_decay
from .peer_kl import PeerKL
from .rampup import sigmoid_rampup
from .registry import METHODS, TERMS, Method, register_method, register_term
from .ring_kl import RingKL
from .term import (
    PEER_NEEDS,
    Batch,
    Fuser,
    FuserStep,
    FusionOptimizerConfig,
    MemberInfo,
    Need,
    OwnedOptimizer,
    RampedSettings,
    Term,
    TermSettings,
    TermSpec,
    TrunkHook,
)
from .transfer import common_shape, transfer_layer

register_method("vanilla", [CrossEntropy])
register_method("dml", [CrossEntropy, PeerKL])
register_method("l1", [CrossEntropy, RingKL, Align.configured(norm="l1")])
register_method("l2", [CrossEntropy, RingKL, Align.configured(norm="l2")])
register_method("afd", [CrossEntropy, RingKL, Adversarial])
register_method("ffl", [CrossEntropy, FusedKL])
register_method("afd+ffl", [CrossEntropy, RingKL, Adversarial, FusedKL])
register_method("kdcl", [CrossEntropy, EnsembleKL])
register_method("one", [CrossEntropy, TeacherCE, TeacherKL])
register_method("okddip", [CrossEntropy, AttentionKL])
register_method("pcl", [CrossEntropy, PeerEnsembleKL, PeerMeanKL])
BUILT_IN_METHODS = tuple(METHODS)  # plugins register theirs after these

__all__ = [
    "BUILT_IN_METHODS",
    "METHODS",
    "TERMS",
    "Method",
    "register_method",
    "register_term",
    "PEER_NEEDS",
    "Batch",
    "Fuser",
    "FuserStep",
    "FusionOptimizerConfig",
    "MemberInfo",
    "Need",
    "OwnedOptimizer",
    "RampedSettings",
    "Term",
    "TermSettings",
    "TermSpec",
    "TrunkHook",
    "Adversarial",
    "Align",
    "AttentionKL",
    "CrossEntropy",
    "EnsembleKL",
    "FusedKL",
    "PeerEnsembleKL",
    "PeerKL",
    "PeerMeanKL",
    "RingKL",
    "TeacherCE",
    "TeacherKL",
    "Discriminator",
    "FusionModule",
    "Gate",
    "PeerAttention",
    "PeerEnsemble",
    "peer_targets",
    "ema_decay",
    "alignment_loss",
    "discriminator_loss",
    "distill_kl",
    "ensemble_teacher",
    "gated_teacher",
    "generator_loss",
    "sigmoid_rampup",
    "common_shape",
    "transfer_layer",
]
