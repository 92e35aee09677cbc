"""Any torchvision classification model as a FeatureNet, through FX feature extraction.

torchvision's `create_feature_extractor` rewrites the model's graph to return chosen nodes;
we ask it for two: the input of the last global pooling (the feature map) and the graph's
output (the logits). One forward gives both; the model's own `forward` is never rewritten.
"""

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, fx, nn
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor

from okd_ray.errors import ModelError, did_you_mean
from okd_ray.models.base import FeatureNet

_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOL_FUNCTIONS = (F.adaptive_avg_pool2d, F.adaptive_max_pool2d)


def _tracer_kwargs() -> dict:
    """torchvision's own defaults (torchvision.ops stay leaves), so our node names match its."""
    ops = [m for m in vars(torchvision.ops).values() if isinstance(m, type) and issubclass(m, nn.Module)]
    return {"autowrap_modules": (math, torchvision.ops), "leaf_modules": ops}


def _is_global_pool(node: fx.Node, model: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), _POOL_MODULES)
    if node.op == "call_function" and node.target in _POOL_FUNCTIONS:
        return True
    # x.mean([2, 3]) or torch.mean(x, (-2, -1)) over an N x C x H x W map, as in ShuffleNet and MnasNet.
    if (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    ):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(dims, (list, tuple)) and {d % 4 for d in dims if isinstance(d, int)} == {2, 3}
    return False


def _head_nodes(model: nn.Module) -> tuple[dict[fx.Node, str], str | None, str | None]:
    """Trace `model` in eval mode; return node names, the guessed feature node and the logits node."""
    training = model.training
    tracer = NodePathTracer(**_tracer_kwargs())
    try:
        graph = tracer.trace(model.eval())
    except Exception as err:  # FX raises many kinds; all mean "cannot trace this model"
        raise ModelError(f"torch.fx cannot trace {type(model).__name__}: {err}") from err
    finally:
        model.train(training)
    names = tracer.node_to_qualname

    output = next(n for n in graph.nodes if n.op == "output")
    logits = output.args[0] if isinstance(output.args[0], fx.Node) else None
    feature = None
    for node in graph.nodes:
        if node is logits:
            break
        if _is_global_pool(node, model) and isinstance(node.args[0], fx.Node):
            feature = node.args[0]
    qualnames = list(names.values())
    return (
        names,
        _short_name(names[feature], qualnames) if feature is not None else None,
        _short_name(names[logits], qualnames) if logits is not None else None,
    )


def _matches(node: str, qualnames: list[str]) -> list[str]:
    """The node names `node` selects: itself, or all nodes inside it if it names a module."""
    return [q for q in qualnames if q == node or q.startswith(node + ".")]


def _short_name(qualname: str, qualnames: list[str]) -> str:
    """The shortest module prefix torchvision resolves to the same node: 'layer4' for 'layer4.1.relu_1'."""
    parts = qualname.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if _matches(prefix, qualnames)[-1] == qualname:
            return prefix
    return qualname


def _check_node(option: str, node: str, names: dict[fx.Node, str]) -> None:
    """A node name (or a module prefix of node names, as torchvision allows) must exist."""
    qualnames = list(names.values())
    if _matches(node, qualnames):
        return
    raise ModelError(
        f"`{option}`={node!r} is not a node of this model; the last nodes are "
        f"{', '.join(qualnames[-12:])} (torchvision.models.feature_extraction.get_graph_node_names lists all)"
    )


def replace_input_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first 3-channel Conv2d for one taking `in_channels` (same out channels, kernel,
    stride, padding, dilation, bias).

    The new weights come from the model's own: summed over RGB for one channel, else tiled and
    scaled by 3 / in_channels (timm's `adapt_input_conv` rule), which keeps the output's scale
    and uses no random numbers.
    """
    for name, conv in model.named_modules():  # noqa: B007 - the one found is read after the loop
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3 and conv.groups == 1:
            break
    else:
        raise ModelError(f"{type(model).__name__} has no 3-channel Conv2d to adapt to {in_channels} channels")
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        w = conv.weight
        if in_channels == 1:
            new.weight.copy_(w.sum(1, keepdim=True))
        else:
            new.weight.copy_(w.repeat(1, math.ceil(in_channels / 3), 1, 1)[:, :in_channels] * (3 / in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


class TorchvisionNet(FeatureNet):
    """Wraps a classifier so one forward returns (feature map, logits).

    The feature node defaults to the input of the last global pooling before the logits
    (`layer4` for ResNets, `features` for MobileNets, the final `relu` for DenseNets);
    `feature_node` overrides it with any name from `get_graph_node_names(model)`.

    `copy.deepcopy` keeps both the train and eval graphs; a pickled copy keeps only the graph
    of the mode it was in (a torch.fx limit), which differs only for models that branch on
    `self.training` outside nn.Modules (e.g. swin's functional dropout). Build models by name
    in each process and move state dicts.
    """

    def __init__(self, model: nn.Module, *, feature_node: str | None = None, logits_node: str | None = None):
        super().__init__()
        names, feature_guess, logits_guess = _head_nodes(model)
        if feature_node is None and feature_guess is None:
            raise ModelError(
                f"found no global pooling before the logits of {type(model).__name__}; "
                "name the node that gives the last feature map with the `feature_node` option "
                "(torchvision.models.feature_extraction.get_graph_node_names lists the nodes)"
            )
        if logits_node is None and logits_guess is None:
            raise ModelError(
                f"{type(model).__name__} does not return a single tensor; "
                "name the node that gives the logits with the `logits_node` option"
            )
        self.feature_node = feature_node or feature_guess
        self.logits_node = logits_node or logits_guess
        _check_node("feature_node", self.feature_node, names)
        _check_node("logits_node", self.logits_node, names)
        try:
            # Both nodes exist in eval mode (checked above); a model whose train-mode graph
            # lacks one gets a ValueError here.
            self.body = create_feature_extractor(
                model,
                return_nodes={self.feature_node: "feature", self.logits_node: "logits"},
                tracer_kwargs=_tracer_kwargs(),
                suppress_diff_warning=True,
            )
        except ValueError as err:
            raise ModelError(f"cannot extract ({self.feature_node}, {self.logits_node}): {err}") from err

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.body(x)
        return out["feature"], out["logits"]


def classification_models() -> list[str]:
    """Names that `torchvision.models.get_model` builds as classifiers."""
    return torchvision.models.list_models(module=torchvision.models)


def torchvision_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    feature_node: str | None = None,
    logits_node: str | None = None,
    **model_kwargs,
) -> TorchvisionNet:
    """`torchvision.models.get_model(name, weights=None, num_classes=...)` as a FeatureNet.

    `model_kwargs` go to torchvision's builder (e.g. `aux_logits=False` for inception_v3).
    """
    known = classification_models()
    if name not in known:
        hint = did_you_mean(name, known)
        raise ModelError(
            f"unknown torchvision classification model {name!r}; {hint}"
            f"torchvision.models.list_models(module=torchvision.models) gives: {', '.join(known)}"
        )
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **model_kwargs)
    except TypeError as err:  # an option the builder does not take
        raise ModelError(f"torchvision's {name}: {err}") from err
    if in_channels != 3:
        replace_input_conv(model, in_channels)
    return TorchvisionNet(model, feature_node=feature_node, logits_node=logits_node)
