"""Layer names of an ONNX graph: which tensor a torch module name, a node name or a tensor name
stands for, and which module names the graph cannot honour.

A graph exported by `torch.onnx.export` records the torch module each node came from: the
TorchScript exporter (dynamo=False) in node names ("/features/features.0/Conv"), the new
exporter in `pkg.torch.onnx.name_scopes` metadata. A module's output is the last node of its
scope. Exporters also fold an eval-mode BatchNorm into the conv before it, which leaves one
Conv node computing the BatchNorm's output:

- dynamo=False: the Conv keeps the conv's name ("/conv1/Conv") and gets computed
  initializers ("onnx::Conv_146") for weights; the BatchNorm leaves no trace.
- dynamo=True (its onnxscript optimiser): the Conv is scoped to the BatchNorm ("bn1") and
  keeps the conv's initializer names ("conv1.weight", holding the folded values); the conv
  has no node of its own.

Exporting with do_constant_folding=False or training=TrainingMode.PRESERVE (dynamo=False),
or optimize=False (dynamo=True), keeps the BatchNorm as a node and every name exact.

A module name is never mapped to a tensor that computes something else: the conv of a
folded pair (and, for dynamo=False, an enclosing module that ends in it) is refused with the
reason, and where the graph names the BatchNorm (dynamo=True) its name reads the folded
conv's output, which is the BatchNorm's.
"""
from __future__ import annotations

import ast
from typing import Any

from sketchmine.model.onnx_layout import constants
from sketchmine.model.taps import SOFTMAX

DEFAULT_OPS = ("Conv", "Gemm", "MatMul")
SLASH = "|"
"""Stands for "/" in the layer names of a run: a node or tensor name "/features/Relu" is
mined as layer "|features|Relu" (Zarr group names cannot hold "/"); either form is accepted."""
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
KEEP_BN = ("export with torch.onnx.export(..., dynamo=False, do_constant_folding=False) (or "
           "training=torch.onnx.TrainingMode.PRESERVE) to keep the BatchNorm as a node of its own")
KEEP_BN_DYNAMO = "export with torch.onnx.export(..., dynamo=True, optimize=False) to keep the BatchNorm as a node of its own"


def torch_scope(node: Any) -> str | None:
    """The qualified torch module name a node was exported from, if the exporter said so.

    New exporter: metadata `pkg.torch.onnx.name_scopes` = ['', 'features', 'features.0', 'conv2d']
    (module names, then the op). TorchScript exporter: node name "/layer2/layer2.0/downsample/
    downsample.0/Conv", where a Sequential child repeats its parent's segment ("downsample.0").
    """
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return scopes[-2] or None if len(scopes) >= 2 else None
    parts = node.name.split("/")
    if not node.name.startswith("/") or len(parts) < 3:
        return None
    name, last = "", ""
    for seg in parts[1:-1]:
        if last and seg.startswith(last + "."):
            name += seg[len(last):]  # "downsample" + ".0"
        else:
            name = f"{name}.{seg}" if name else seg
        last = seg
    return name


def _rewrite_rule(node: Any) -> str:
    """The onnxscript rewrite rules that produced a node (new exporter's optimiser), or ""."""
    return next((p.value for p in node.metadata_props if p.key == "pkg.onnxscript.rewriter.rule_name"), "")


class GraphNames:
    """The name tables of one graph: tensor producers, node names, module scopes, and the
    module names refused because the exporter folded their computation into another node."""

    def __init__(self, graph: Any, file: str) -> None:
        self.file = file
        self.nodes = list(graph.node)
        self.constants = constants(graph)
        self.producer: dict[str, Any] = {}  # tensor name → node
        self.by_node: dict[str, str] = {}  # node name → first output
        self.by_module: dict[str, str] = {}  # torch module name → output of the last node of its scope
        self.scope: dict[str, str | None] = {}  # node output → its module
        self.refused: dict[str, str] = {}  # module name → why it cannot be tapped
        last: dict[str, Any] = {}  # module → the last node of its scope
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            if node.name and node.output:
                self.by_node.setdefault(node.name, node.output[0])
            scope = torch_scope(node)
            if node.output:
                self.scope[node.output[0]] = scope
            while scope:  # the node belongs to its module and every enclosing one
                self.by_module[scope], last[scope] = node.output[0], node
                scope = scope.rpartition(".")[0]
        initializers = {t.name for t in graph.initializer}
        for node in self.nodes:
            if node.op_type in _WEIGHTED and len(node.input) > 1 and node.input[1] in initializers:
                self._check_folded(node, node.input[1], last)
        for name in self.refused:
            self.by_module.pop(name, None)
        self.written: dict[str, set[str]] = {}  # a name as a run writes it ("/" as "|") → the names written so
        for name in (*self.by_module, *self.by_node, *self.producer):
            self.written.setdefault(name.replace("/", SLASH), set()).add(name)

    def _check_folded(self, node: Any, weight: str, last: dict[str, Any]) -> None:
        """Refuse the module names a node's output does not stand for (see the module doc)."""
        scope = self.scope.get(node.output[0])
        tap = (node.name or node.output[0]).replace("/", SLASH)
        if node.op_type == "Conv" and "::" in weight and scope:  # dynamo=False: weights computed at export
            self.refused[scope] = (
                f"the output of {scope!r} does not exist in {self.file}: the exporter folded the BatchNorm that "
                f"follows {scope!r} into its Conv (node {node.name} computes with the exporter's constant {weight!r}, "
                f"not the module's own weights), so that node outputs the BatchNorm's values. Tap that output as layer "
                f"{tap!r}, or {KEEP_BN}")
            parent = scope.rpartition(".")[0]
            while parent and last.get(parent) is node:  # may or may not have held the BatchNorm
                self.refused[parent] = (
                    f"{parent!r} cannot be tapped in {self.file}: it ends in node {node.name}, a conv into which "
                    f"the exporter folded a BatchNorm that may lie outside {parent!r}. Tap that node's output as "
                    f"layer {tap!r} (the conv with the BatchNorm applied), or {KEEP_BN}")
                parent = parent.rpartition(".")[0]
            return
        owner = weight.rpartition(".")[0]  # "conv1.weight" → "conv1"
        if owner and "::" not in owner and owner != scope and owner not in self.by_module:
            folded = "BatchNorm" in _rewrite_rule(node)
            bn = repr(scope) if scope else "a BatchNorm"
            self.refused[owner] = (
                f"the output of {owner!r} does not exist in {self.file}: its weights {weight!r} feed node {node.name or tap}"
                + (f", which the exporter attributes to {scope!r}" if scope else "")
                + (f" (it folded {bn} into the {node.op_type} of {owner!r}; that node outputs the "
                   f"BatchNorm's values)" if folded else "")
                + f". Tap {scope or tap!r}" + (f", or {KEEP_BN_DYNAMO}" if folded else ""))

    def _exact(self, name: str) -> str | None:
        """The tensor a name as the graph spells it stands for: module, then node, then tensor name."""
        if name in self.by_module:
            return self.by_module[name]
        if name in self.by_node:
            return self.by_node[name]
        return name if name in self.producer else None

    def tensors(self, layer: str) -> dict[str, str]:
        """The graph's names that a layer name stands for once "/" is written "|" (a run's layer
        "a|b" was asked as "a/b", "a|b" or another spelling), each → its tensor."""
        names = self.written.get(layer.replace("/", SLASH), set())
        return {name: t for name in sorted(names) if (t := self._exact(name)) is not None}

    def tensor(self, layer: str) -> str | None:
        """The tensor a layer name stands for (module, then node, then tensor name), None where it
        stands for none, or for two that differ only in "/" and "|" (which a run cannot tell apart)."""
        found = set(self.tensors(layer).values())
        return found.pop() if len(found) == 1 else None

    def clash(self, layer: str) -> str | None:
        """Why a layer name cannot be mined where its spellings with "/" and "|" name two tensors."""
        names = self.tensors(layer)
        if len(set(names.values())) < 2:
            return None
        return (f"layer {layer!r} of {self.file} is written {layer.replace('/', SLASH)!r} in a run (which writes "
                f"'/' as '|'), as are {len(names)} names of the graph, of {len(set(names.values()))} tensors: "
                + ", ".join(f"{n!r} (tensor {t!r})" for n, t in names.items())
                + ". Rename them in the graph so that they differ in more than '/' and '|'")

    def _attention(self, tensor: str) -> bool:
        """Whether `tensor` is an attention's scores: a product of two activations (MatMul, Einsum),
        then scaled, masked or biased elementwise and reshaped (Swin's window mask), as a Softmax
        over them is fed."""
        for _ in range(8):
            node = self.producer.get(tensor)
            if node is None:
                return False
            if node.op_type in ("MatMul", "Einsum"):
                return len(node.input) == 2 and not any(i in self.constants for i in node.input)
            if node.op_type not in ("Add", "Sub", "Mul", "Div", "Where", "Cast", "Identity", "Reshape", "Transpose"):
                return False
            tensor = node.input[0] if node.op_type in ("Reshape", "Transpose") else next(
                (i for i in node.input if i not in self.constants), "")
        return False

    def default_layers(self) -> list[str]:
        """Every Conv, Gemm and MatMul by a weight (an exported Linear; not an attention's
        products) output in graph order, named by its torch module when that module holds no
        other such node (and the name is not refused), else by the node, plus every Softmax node
        but an attention's (virtual: the softmax of the logits, where none is left)."""
        chosen = [n for n in self.nodes if n.op_type in DEFAULT_OPS and (
            n.op_type != "MatMul" or len(n.input) == 2 and n.input[1] in self.constants)]
        softmax = [n for n in self.nodes if n.op_type == "Softmax" and not self._attention(n.input[0])]
        per_scope: dict[str, int] = {}
        for node in chosen:
            if s := self.scope.get(node.output[0]):
                per_scope[s] = per_scope.get(s, 0) + 1
        names: list[str] = []
        default = {id(n) for n in (*chosen, *softmax)}
        for node in self.nodes:
            if id(node) not in default:
                continue
            scope = self.scope.get(node.output[0])
            # its module's name stands for the module's output (a Linear's bias Add after its MatMul)
            reads = {scope: self.by_module.get(scope or "")} if scope and per_scope.get(scope, 1) == 1 else {}
            reads.update({node.name: node.output[0], node.output[0]: node.output[0]})
            name = next((n for n, t in reads.items() if n and t and self.tensor(n) == t), node.output[0])
            name = name.replace("/", SLASH)
            if name not in names:
                names.append(name)
        if not softmax:
            names.append(SOFTMAX)
        return names
