"""A population member: its network, transfer layer, its method's terms and its optimizers. Plain PyTorch.

Both engines hold these objects and call the same methods in the same order: ``begin_epoch``, then per
batch ``forward`` and ``update``; ``begin_eval``/``eval_next`` to test. What it returns leaves through
``outgoing``, so every engine and transport hands the others the same bytes.
"""

from __future__ import annotations

import inspect
import traceback
from dataclasses import replace
from types import TracebackType

import torch

from okd_ray.data.base import Dataset, Split
from okd_ray.errors import OkdRayError, TermFailed
from okd_ray.execution import compile_error
from okd_ray.methods import PEER_NEEDS, Batch, Need, OwnedOptimizer, Term, transfer_layer
from okd_ray.optim import make_optimizer

from .outgoing import map_tensors, outgoing
from .part import Part
from .plan import build_terms, member_network
from .protocol import (
    FusedMessage,
    FusionInput,
    MemberEval,
    MemberForward,
    MemberUpdate,
    PeerMessage,
    RingMessage,
    SharedMessage,
    TrunkGrad,
)
from .replicas import shard
from .spec import MemberSpec


class Member(Part):
    def __init__(self, spec: MemberSpec, device: str | torch.device = "cpu", dataset: Dataset | None = None):
        super().__init__(spec, ("member", spec.index), device, dataset)
        self.index, self.needs = spec.index, spec.needs
        with self.rng.active(self.device):
            self.net = member_network(spec).to(self.device)
            self.transfer = transfer_layer(spec.shape, spec.common).to(self.device) if spec.common else None
            self.terms = build_terms(spec, self.net, self.stepper)
        self.modules = {"net": self.net, **({"transfer": self.transfer} if self.transfer else {})}
        for term in self.terms:
            self.modules.update(term.modules())
        self.feature_mode = spec.feature_update.mode if spec.feature_update else "joint"
        self._feature_update = FEATURE_UPDATES[self.feature_mode]
        network = list(self.net.parameters())
        transfer = list(self.transfer.parameters()) if self.transfer else []
        learned = {update: learned_with_member(self.terms, update) for update in ("logit", "feature")}
        # The logit update trains the network (and logit terms' own parameters); the transfer layer feeds only
        # feature-map terms.
        if self.feature_mode == "joint":
            logit_params = network + transfer + learned["logit"] + learned["feature"]
        else:
            logit_params = network + learned["logit"]
        self.optimizers = {"logit": OwnedOptimizer(make_optimizer(logit_params, spec.optimizer), spec.optimizer)}
        if self.feature_mode != "joint":
            feature = spec.feature_update.optimizer
            self.optimizers["feature"] = OwnedOptimizer(
                make_optimizer(network + transfer + learned["feature"], feature), feature
            )
        for term in self.terms:
            self.optimizers.update(term.optimizers())
        # What every evaluation runs: the member's network, or the one a term deploys instead (PCL's mean).
        self.deployed = next((t.deployed() for t in self.terms if t.deployed() is not None), self.net)
        self.stream = spec.stream
        self._batches = self._eval_batches = None

    # --- training -------------------------------------------------------------------------------------

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        """Learning rates and term weights of this epoch; start the epoch's seeded batch order."""
        lrs = super().begin_epoch(epoch)
        self.weights = {term.name: term.settings.weight_at(epoch) for term in self.terms}
        if self.dataset is not None:
            self._batches = iter(self.dataset.train_batches(epoch, self.stream))
        return lrs

    def forward(self, shared: SharedMessage | None = None) -> MemberForward:
        """Run the next batch (from the images, or from the trunk's shared features) and say what to send."""
        self._shared, gate, trunk_messages = None, None, {}
        if shared is None:
            x, y, ids = shard(next(self._batches), self.spec.replica, self.spec.replicas)
            x = self.images(x)
        else:  # fresh leaves: their gradients go back to the trunk
            self._shared = x = self.images(shared.features).detach().requires_grad_()
            if shared.gate is not None:
                gate = shared.gate.to(self.device).detach().requires_grad_()
            y, ids = shared.labels, shared.ids
            trunk_messages = map_tensors(shared.messages or {}, lambda t: t.to(self.device))
        with self.rng.active(self.device), self.precision.autocast():
            feature, logits, public = self._run(x)
            self._own = own = Batch(
                labels=y.to(self.device, non_blocking=True),
                logits=logits,
                feature=feature,
                public=public,
                index=self.index,
                input=x,
                trunk_messages=trunk_messages,
                ids=ids,
                epoch=self.epoch,
                step=self.step_index,
                weights=self.weights,
                gate=gate,
            )
            self.log({"logits": logits}, f"members.{self.index}.optimizer.lr", metric=False)
            messages = {t.name: t.to_peers(own) for t in self.terms if Need.PEER_MESSAGES in t.needs}
        return outgoing(
            MemberForward(
                ring=RingMessage(
                    public if Need.RING_MAP in self.needs else None, logits if Need.RING_LOGITS in self.needs else None
                ),
                to_fusion=FusionInput(feature, logits, own.labels) if Need.FUSION in self.needs else None,
                to_peers=PeerMessage(
                    logits if Need.PEER_LOGITS in self.needs else None,
                    public if Need.PEER_MAPS in self.needs else None,
                    messages or None,
                )
                if PEER_NEEDS & self.needs
                else None,
            )
        )

    def _run(self, x: torch.Tensor):
        feature, logits = self.net(x)
        return feature, logits, self.transfer(feature) if self.transfer is not None else None

    def rerun(self):
        """The last batch through the network again (the sequential feature update's second pass)."""
        return self._run(self._own.input.detach())

    def update(self, ring: RingMessage | None, fused: FusedMessage | None, *peers: PeerMessage) -> MemberUpdate:
        """One optimisation step from the last ``forward``, given what the ring, the peers and the fusion sent.

        Logs each term's unweighted loss and the batch's correct count (read at the epoch's end); returns the step's
        index and the gradient for the trunk.
        """
        to_device = lambda t: t.to(self.device) if t is not None else None  # noqa: E731
        others = [k for k in range(self.spec.members) if k != self.index]
        own, received = self._own, dict(zip(others, peers))
        batch = replace(
            own,
            ring_map=to_device(ring.map) if ring else None,
            ring_logits=to_device(ring.logits) if ring else None,
            peer_logits={k: to_device(m.logits) for k, m in received.items() if m.logits is not None},
            peer_maps={k: to_device(m.map) for k, m in received.items() if m.map is not None},
            peer_messages={k: map_tensors(m.messages, to_device) for k, m in received.items() if m.messages},
            fused_logits=to_device(fused.logits) if fused else None,
        )
        with self.rng.active(self.device):
            with self.precision.autocast():
                losses = {term.name: self._loss(term, batch) for term in self.terms}
            self.log(
                losses,
                self._term_keys,
                f"members.{self.index}.optimizer.lr",
                *(["method.feature_update.optimizer.lr"] if "feature" in self.optimizers else []),
            )
            after = self._step_network(batch, losses, fused)
            for term in self.terms:
                with self.precision.autocast():  # a term's forward on the member's maps (AFD's D step)
                    self.log(term.after_update(after), *term.lr_keys())
        self.log({"train_correct": own.logits.detach().argmax(1) == own.labels})
        to_trunk = None  # unscaled before end_step: fp16's next scale is not the one this backward used
        if self._shared is not None:
            to_trunk = outgoing(
                TrunkGrad(
                    self.precision.unscaled(self._shared.grad),
                    self.precision.unscaled(own.gate.grad if own.gate is not None else None),
                )
            )
        self.end_step(len(own.labels))
        done, self.step_index = self.step_index, self.step_index + 1
        self._own = self._shared = None
        return MemberUpdate(done, to_trunk)

    def _term_keys(self, name: str) -> list[str]:
        """A diverged loss term: its weight, and its own optimizers (AFD's discriminator feeds the generator)."""
        term = next(t for t in self.terms if t.name == name)
        return [f"method.terms.{name}.weight", *term.lr_keys()]

    def _weighted(self, losses: dict[str, torch.Tensor], update: str) -> torch.Tensor | float:
        return sum(self.weights[t.name] * losses[t.name] for t in self.terms if t.update == update)

    def _step_network(self, batch: Batch, losses: dict[str, torch.Tensor], fused: FusedMessage | None) -> Batch:
        """The logit loss with the fusion's gradients on the map and the logits, and the feature-map terms in the
        configured update; returns the batch the terms' ``after_update`` sees."""
        for owned in self.optimizers.values():
            owned.optimizer.zero_grad(set_to_none=True)
        scale = self.precision.scale  # fp16: this member's loss scale on its losses and on what the fusion sent
        outputs, grads = [scale(self._weighted(losses, "logit"))], [None]
        for output, grad in (
            (batch.feature, fused and fused.feature_grad),
            (batch.logits, fused and fused.logits_grad),
        ):
            if grad is not None:  # the fusion loss's gradient, computed where the fusion lives
                outputs.append(output)
                grads.append(scale(grad.to(self.device)).to(output.dtype))
        return self._feature_update(self, batch, outputs, grads, scale(self._weighted(losses, "feature")))

    def feature_loss(self, batch: Batch) -> torch.Tensor:
        return self._weighted({t.name: self._loss(t, batch) for t in self.terms if t.update == "feature"}, "feature")

    def _loss(self, term: Term, batch: Batch) -> torch.Tensor:
        """``term.loss(batch)``; an error it raises, or a value that is not one number, is an error naming the term,
        this part, the step and the term's line (an okd-ray error it raises stays as it is)."""
        try:
            loss = term.loss(batch)
        except Exception as e:  # noqa: BLE001 - a plugin's code: any error
            if isinstance(e, OkdRayError) or compile_error(e):  # a term's module that torch.compile failed on: the
                raise  # part's, named where its call is watched
            raise TermFailed(
                self.name,
                term.name,
                self.epoch + 1,
                self.step_index + 1,
                f"raised {type(e).__name__}: {e}",
                code_line(type(term), e.__traceback__),
            ) from None
        if not isinstance(loss, torch.Tensor) or loss.ndim:  # shape only: no host sync
            got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise TermFailed(
                self.name,
                term.name,
                self.epoch + 1,
                self.step_index + 1,
                f"returned {got}, not one number (a 0-d tensor: reduce it, e.g. with .mean())",
                inspect.getsourcefile(type(term)) or type(term).__qualname__,
            )
        return loss

    def step_features(self, feature_grads: tuple[torch.Tensor | None, ...]) -> None:
        """The feature optimizer steps on ``feature_grads`` (None where the feature loss does not reach)."""
        for p, g in zip(self.feature_params(), feature_grads):
            p.grad = g
        self.stepper.step(self.optimizers["feature"].optimizer)

    def feature_params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizers["feature"].optimizer.param_groups for p in group["params"]]

    # --- evaluation -----------------------------------------------------------------------------------

    def begin_eval(self, split: Split) -> None:
        super().begin_eval(split)
        if self.dataset is not None:
            self._eval_batches = iter(self.dataset.eval_batches(split))

    @torch.no_grad()
    def eval_next(self, shared: SharedMessage | None = None) -> MemberEval:
        """The next evaluation batch through the deployed network: the feature map for the fusion (FFL), the
        logits and the labels."""
        x, y = next(self._eval_batches) if shared is None else (shared.features, shared.labels)
        with self.rng.active(self.device), self.precision.autocast():
            feature, logits = self.deployed(self.images(x))
        return outgoing(MemberEval(feature if Need.FUSION in self.needs else None, logits, y))


def code_line(cls: type, trace: TracebackType | None) -> str:
    """``file:line`` of the innermost frame of ``trace`` in ``cls``'s own file (a plugin's term), else that file."""
    source = inspect.getsourcefile(cls) or cls.__qualname__
    lines = [f"{f.filename}:{f.lineno}" for f in traceback.extract_tb(trace) if f.filename == source]
    return lines[-1] if lines else source


def learned_with_member(terms: list, update: str) -> list[torch.nn.Parameter]:
    """The trainable parameters of the ``update`` terms' modules that no optimizer of the term's own steps: they
    learn from the member's loss with the member's optimizer (a FitNets regressor; AFD's discriminator has its
    own optimizer, an EMA teacher needs no gradient)."""
    out = []
    for term in terms:
        if term.update != update:
            continue
        own = {id(p) for owned in term.optimizers().values() for g in owned.optimizer.param_groups for p in g["params"]}
        out += [
            p for module in term.modules().values() for p in module.parameters() if p.requires_grad and id(p) not in own
        ]
    return out


# --- the feature-map update, one function per mode (method.feature_update.mode), chosen once per member ---
# Each gets the member, the batch, the logit update's outputs and gradients (the logit loss, and the member's map
# with the fusion's gradient on it) and the weighted feature loss; it steps the optimizers and returns the batch
# the terms' after_update sees.


def joint(member: Member, batch: Batch, outputs: list, grads: list, feature_loss) -> Batch:
    """The member's optimizer steps once on the sum of the logit and feature losses."""
    torch.autograd.backward([outputs[0] + feature_loss, *outputs[1:]], grads)
    member.stepper.step(member.optimizers["logit"].optimizer)
    return batch


def alternating(member: Member, batch: Batch, outputs: list, grads: list, feature_loss) -> Batch:
    """Both gradients from this forward pass, taken before either optimizer steps."""
    feature_grads = torch.autograd.grad(feature_loss, member.feature_params(), retain_graph=True, allow_unused=True)
    torch.autograd.backward(outputs, grads)
    member.stepper.step(member.optimizers["logit"].optimizer)
    member.step_features(feature_grads)
    return batch


def sequential(member: Member, batch: Batch, outputs: list, grads: list, feature_loss) -> Batch:
    """The logit optimizer steps; a second forward pass on the same batch; the feature optimizer steps on the
    updated network's feature loss. after_update (AFD's D step) sees the second pass."""
    torch.autograd.backward(outputs, grads)
    member.stepper.step(member.optimizers["logit"].optimizer)
    with member.precision.autocast():
        feature, logits, public = member.rerun()
        second = replace(batch, feature=feature, logits=logits, public=public)
        feature_loss = member.precision.scale(member.feature_loss(second))
    member.step_features(torch.autograd.grad(feature_loss, member.feature_params(), allow_unused=True))
    return second


FEATURE_UPDATES = {"joint": joint, "alternating": alternating, "sequential": sequential}
