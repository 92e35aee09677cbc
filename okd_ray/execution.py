"""How a part's networks execute: eagerly or compiled with ``torch.compile`` (``compile``), and in which memory
format (``memory_format``). Both engines build parts through ``build_part``, which applies these the same way, so
a compiled run stays bit-identical between engines at equal thread counts. Checkpoints keep the plain modules'
state dicts: ``nn.Module.compile`` compiles in place and leaves the parameters' names alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from okd_ray.errors import CompileFailed
from okd_ray.settings import Strict

MemoryFormat = Literal["contiguous", "channels_last"]
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}

# Every compiled module shares the code object of ``nn.Module._call_impl``, so one process of the local engine holds
# the compiled variants (shapes, train and eval, grad and no grad) of every part's modules, where a Ray part holds
# its own. Past torch's default of 8 per code object, dynamo would run the rest eagerly without a word, and the
# engines would round differently; so the limit is high, and reaching it is an error rather than a silent fallback.
RECOMPILE_LIMIT = 512


class CompileConfig(Strict):
    """``compile: true`` or these settings: torch.compile's mode, and whether shapes are compiled as dynamic.

    ``dynamic`` is either way decided before the first call, never by what shapes a process saw first (torch's
    automatic dynamic shapes): the local engine's one process sees every member's shapes, a Ray part its own.
    ``max-autotune`` chooses kernels by timing them, so its engines agree only where they chose alike."""

    mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    dynamic: bool = False


def compile_modules(modules: Iterable[nn.Module], config: CompileConfig | None) -> None:
    """Compile every module that holds parameters or buffers in place (its later calls run compiled; its state dict
    is unchanged). A stateless one has nothing to compile, and one that gives dynamo an empty graph (an
    ``nn.Identity`` transfer layer) stops torch.compile for every module the process calls after it: they run
    eagerly without a word (torch 2.14.1, measured), so the local engine's one process would compute otherwise
    than a Ray part that never called it."""
    if config is None:
        return
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, RECOMPILE_LIMIT
    )
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    for module in modules:
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            module.compile(mode=config.mode, dynamic=config.dynamic)


def to_format(modules: Iterable[nn.Module], memory_format: MemoryFormat) -> None:
    """Convert every module's 4-d parameters and buffers in place (the optimizers keep the same parameters)."""
    if memory_format != "contiguous":
        for module in modules:
            module.to(memory_format=FORMATS[memory_format])


def as_input(x: torch.Tensor, device: torch.device, memory_format: MemoryFormat) -> torch.Tensor:
    """A batch of images on ``device``, in ``channels_last`` where asked; else in the layout it came in (a replica's
    share of a batch is a strided view: copying it would change how convolutions round)."""
    if x.dim() != 4 or memory_format == "contiguous":
        return x.to(device, non_blocking=True)
    return x.to(device, memory_format=FORMATS[memory_format], non_blocking=True)


def compile_error(error: BaseException) -> bool:
    """Whether ``error`` is torch.compile's (dynamo's, or its backend's: inductor's, a missing C++ compiler)."""
    return any(c.__module__.startswith(("torch._dynamo", "torch._inductor")) for c in type(error).__mro__)


def compile_failed(part: str, error: BaseException) -> CompileFailed:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    why = "; ".join(lines[:1] + [line for line in lines[1:] if line.startswith("Explanation:")][:1])[:400]
    return CompileFailed(
        f"{part}: torch.compile could not compile its networks ({type(error).__name__}: {why}); "
        "run eagerly with compile=false, or make the module compilable (torch.compile's "
        "troubleshooting: https://pytorch.org/docs/stable/torch.compiler_troubleshooting.html)"
    )
