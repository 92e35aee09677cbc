"""The benchmark's baselines: AFD and FFL as a researcher's own single-process PyTorch script would train them, no
population, parts or messages. The same networks, discriminators, fusion module, losses and optimizers as the
config's (okd-ray's model builders and modules, torch.optim), one function per step.

AFD (a ring of K, the alternating feature update): every network's forward; per network k the logit loss CE +
w·T²·KL(ring ‖ own), the generator loss w·(1 − D_k(own map))², both gradients from that forward, the SGD step and the
feature optimizer's (Adam) step; then D_k's step on the predecessor's map (real) and its own (fake).
FFL: one graph: every member's CE + w·T²·KL(fused ‖ own), the fusion module's CE + w·T²·KL(ensemble ‖ fused) over the
members' maps, one backward, every optimizer steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from okd_ray.config import TrainConfig
from okd_ray.execution import FORMATS, compile_modules, to_format
from okd_ray.methods.adversarial import Discriminator, discriminator_loss, generator_loss
from okd_ray.methods.fusion import FusionModule
from okd_ray.methods.kl import distill_kl
from okd_ray.models import build_model
from okd_ray.optim import Stepper, make_optimizer
from okd_ray.population import PopulationPlan, plan_population
from okd_ray.precision import Precision


def plain_step(
    config: TrainConfig, plan: PopulationPlan, device: torch.device
) -> tuple[Callable[[torch.Tensor, torch.Tensor], None], list]:
    """The config's method (afd or ffl) as one plain step function, and its modules. Its optimizers step through
    okd-ray's ``Stepper``, as a correct script must with torch's fused kernels (optim.py), and it computes in the
    config's precision (autocast; fp16's loss scale)."""
    nets = [
        build_model(m.arch, in_channels=plan.data.in_channels, num_classes=plan.data.num_classes).to(device)
        for m in config.members
    ]
    sgd = [make_optimizer(net.parameters(), m.optimizer) for net, m in zip(nets, config.members)]
    stepper = Stepper(Precision(config.precision, device))
    if config.method.name == "afd":
        return afd(config, nets, plan.shapes, sgd, device, stepper)
    return ffl(config, nets, plan.shapes, sgd, device, stepper, plan.data.num_classes)


def afd(config, nets, shapes, sgd, device, stepper):
    kl, adversarial = config.method.settings("ring_kl"), config.method.settings("adversarial")
    discs = [Discriminator(c, h).to(device) for c, h, _ in shapes]
    feature_opt = [make_optimizer(net.parameters(), config.method.feature_update.optimizer) for net in nets]
    disc_opt = [make_optimizer(d.parameters(), adversarial.discriminator_optimizer) for d in discs]

    precision = stepper.precision

    def train_step(x, y):
        with precision.autocast():
            outputs = [net(x) for net in nets]
        for k, net in enumerate(nets):
            (feature, logits), (ring_map, ring_logits) = outputs[k], outputs[k - 1]
            with precision.autocast():
                logit_loss = F.cross_entropy(logits, y) + kl.weight * distill_kl(
                    logits, ring_logits.detach(), kl.temperature
                )
                feature_loss = adversarial.weight * generator_loss(discs[k](feature))
            params = list(net.parameters())
            scaled = precision.scale(feature_loss)
            feature_grads = torch.autograd.grad(scaled, params, retain_graph=True, allow_unused=True)
            sgd[k].zero_grad(set_to_none=True)
            stepper.backward(logit_loss)
            stepper.step(sgd[k])
            for p, g in zip(params, feature_grads):
                p.grad = g
            stepper.step(feature_opt[k])
            with precision.autocast():
                d_loss = discriminator_loss(discs[k](ring_map.detach()), discs[k](feature.detach()))
            disc_opt[k].zero_grad(set_to_none=True)
            stepper.backward(d_loss)
            stepper.step(disc_opt[k])
        precision.update()

    return train_step, [*nets, *discs]


def ffl(config, nets, shapes, sgd, device, stepper, num_classes):
    settings = config.method.settings("fused_kl")
    weight, temperature = settings.weight_at(0), settings.temperature
    fusion = FusionModule(shapes, num_classes).to(device)
    fusion_config = settings.fusion_optimizer.model_copy(update={"lr": config.members[0].optimizer.lr})
    fusion_opt = make_optimizer(fusion.parameters(), fusion_config)

    def train_step(x, y):
        with stepper.precision.autocast():
            outputs = [net(x) for net in nets]
            fused = fusion([feature for feature, _ in outputs])
            ensemble = torch.stack([logits for _, logits in outputs]).mean(0)
            loss = F.cross_entropy(fused, y) + weight * distill_kl(fused, ensemble, temperature)
            for _, logits in outputs:
                loss = loss + F.cross_entropy(logits, y) + weight * distill_kl(logits, fused, temperature)
        for optimizer in (*sgd, fusion_opt):
            optimizer.zero_grad(set_to_none=True)
        stepper.backward(loss)
        for optimizer in (*sgd, fusion_opt):
            stepper.step(optimizer)
        stepper.precision.update()

    return train_step, [*nets, fusion]


def measure_plain(config: TrainConfig, steps: int, warmup: int) -> dict:
    """The plain loop's mean step time over ``steps`` steps after ``warmup``, its modules compiled and in the memory
    format as the config says (as ``build_part`` does it), on the config's device and threads, the engines'
    batches."""
    device = torch.device("cuda" if config.device == "cuda" else "cpu")
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        plan = plan_population(config)
        train_step, modules = plain_step(config, plan, device)
        to_format(modules, config.memory_format)
        compile_modules(modules, config.compile)
        memory_format = FORMATS[config.memory_format]
        data = [(x.to(device, memory_format=memory_format), y.to(device)) for x, y, _ in plan.dataset.train_batches(0)]
        for x, y in data[:warmup]:
            train_step(x, y)
        sync(device)
        started = time.perf_counter()
        for x, y in data[warmup : warmup + steps]:
            train_step(x, y)
        sync(device)
        seconds = (time.perf_counter() - started) / steps
        return {"steps": steps, "step_ms": 1000 * seconds, "images_per_s": config.data.batch_size / seconds}
    finally:
        torch.set_num_threads(threads)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
