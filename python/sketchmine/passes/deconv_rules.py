"""The rules of the deconvolution methods: what happens where the signal passes back through a
rectifier (Springenberg et al. 2015; Zeiler & Fergus 2014), and the traced, rule-aware copy of
a model that applies them (`with_rule`), which deconv.py runs:

    gradient   grad_in = grad_out · [x > 0]
    deconvnet  grad_in = relu(grad_out)                (transposed filters come from autograd,
    guided     grad_in = relu(grad_out) · [x > 0]       max-pool switches from deconv_pools.py)

The other rectifiers (ReLU6, LeakyReLU, PReLU, ELU, GELU, SiLU, Hardswish, ...) get the same
rules with their own f'(x) in place of [x > 0], else "deconvnet" on a network of GELUs would
silently be the gradient. Sigmoid and Tanh, which no paper gives a rule for, pass the gradient.

A softmax (the virtual one, nn.Softmax and nn.LogSoftmax modules, F.softmax, torch.softmax,
x.softmax(dim) and their log spellings) passes the signal back as its
gradient, taken without the cancellation in torch's `p_c · (1 - p_c)`: a softmax's top-k images
are its most confident, where float32 rounds 1 - p_c to nothing (p_c = 1.0 past a logit margin
of about 17), and the signal would lose its largest term (`stable_softmax`).

The model is traced with torch.fx into a new module whose ReLUs (modules, functions, in-place
variants) call a rule-aware autograd function and whose max pools break ties by a rule of their own
(deconv_pools.py: the same switch on a window of the image as on the whole image); the caller's
model is never changed (eval mode while traced, each module's training flag put back after).
"""
from __future__ import annotations

import inspect

import torch
from torch import fx, nn

from sketchmine.model.graph import trace
from sketchmine.passes.deconv_pools import pool_rule

METHODS = ("deconvnet", "guided", "gradient")


class _RuleReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, method: str) -> torch.Tensor:
        ctx.method = method
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        if ctx.method == "gradient":
            return grad * (x > 0), None
        if ctx.method == "deconvnet":
            return grad.clamp_min(0), None
        return grad.clamp_min(0) * (x > 0), None


def _rule_relu(x: torch.Tensor, method: str) -> torch.Tensor:
    return _RuleReLU.apply(x, method)


class _StableSoftmax(torch.autograd.Function):
    """softmax (or log_softmax) along `dim`, whose backward takes 1 - p_j as the sum of the other
    probabilities where p_j > 0.75 (at most one per row): torch's p · (g - <g, p>) cancels there,
    and a one-hot g (a unit's seed) then gets its own logit's term as rounding noise. Pointwise
    arithmetic and sums only, so `is_grads_batched` can vectorise it."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, dim: int, log: bool) -> torch.Tensor:
        ctx.dim, ctx.log = dim, log
        p = torch.softmax(z, dim)
        ctx.save_for_backward(p)
        return torch.log_softmax(z, dim) if log else p

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (p,) = ctx.saved_tensors
        big = p > 0.75
        rest = torch.where(big, p.masked_fill(big, 0).sum(ctx.dim, keepdim=True), 1 - p)  # 1 - p_j, exactly
        # g_j - <g, p> = g_j (1 - p_j) - (<g, p> - g_j p_j): no cancellation for a one-hot g
        if ctx.log:  # d/dz_j of <g, log p>: g_j - p_j Σg
            return g * rest - p * (g.sum(ctx.dim, keepdim=True) - g), None, None
        return p * (g * rest - ((g * p).sum(ctx.dim, keepdim=True) - g * p)), None, None


def stable_softmax(z: torch.Tensor, dim: int = 1, log: bool = False) -> torch.Tensor:
    """torch.softmax (log: log_softmax) with a backward exact near p = 1 (`_StableSoftmax`)."""
    return _StableSoftmax.apply(z, dim, log)


class _RuleSoftmax(nn.Softmax):
    """A softmax or log-softmax (a module, or a function's call), its backward the stable one. An
    nn.Softmax itself, so what reads the graph for ops coupling positions (model/coupling.py) still
    sees a softmax over x. dtype: the one a functional call casts its input to first."""

    def __init__(self, dim: int, log: bool, dtype: torch.dtype | None = None) -> None:
        super().__init__(dim)
        self.log, self.along, self.cast = log, dim, dtype

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return stable_softmax(z if self.cast is None else z.to(self.cast), self.along, self.log)


# a softmax called as a function or a method: whether it is the log one; its parameters by position
_SOFTMAX_FUNCS = {torch.softmax: (False, ("input", "dim", "dtype")),
                  nn.functional.softmax: (False, ("input", "dim", "_stacklevel", "dtype")),
                  torch.log_softmax: (True, ("input", "dim", "dtype")),
                  nn.functional.log_softmax: (True, ("input", "dim", "_stacklevel", "dtype"))}
_SOFTMAX_METHODS = {"softmax": (False, ("self", "dim", "dtype")), "log_softmax": (True, ("self", "dim", "dtype"))}


def _softmax_rule(node: fx.Node, modules: dict[str, nn.Module]) -> _RuleSoftmax | None:
    """The stable stand-in for a softmax or log-softmax along a fixed dim, module (nn.Softmax,
    nn.LogSoftmax) or call (F.softmax, torch.softmax, x.softmax(-1), the log spellings); None for
    anything else. An implicit dim (None: torch's guess by the input's rank) or one computed at run
    time is left to torch's own softmax."""
    if node.op == "call_module":
        soft = modules.get(str(node.target))
        if type(soft) not in (nn.Softmax, nn.LogSoftmax) or not isinstance(soft.dim, int):
            return None
        return _RuleSoftmax(soft.dim, isinstance(soft, nn.LogSoftmax))
    kind = _SOFTMAX_FUNCS.get(node.target) if node.op == "call_function" else (  # type: ignore[arg-type]
        _SOFTMAX_METHODS.get(str(node.target)) if node.op == "call_method" else None)
    if kind is None:
        return None
    log, names = kind
    given = dict(zip(names, node.args)) | dict(node.kwargs)
    dim, dtype = given.get("dim"), given.get("dtype")
    if not isinstance(dim, int) or isinstance(dim, bool) or not (dtype is None or isinstance(dtype, torch.dtype)):
        return None
    return _RuleSoftmax(dim, log, dtype)


class _RuleActivation(torch.autograd.Function):
    """The rule at a rectifier f other than ReLU, given y = f(x) and d = f'(x) (elementwise)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, d: torch.Tensor, method: str) -> torch.Tensor:
        ctx.method = method
        ctx.save_for_backward(d)
        return y.detach().clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (d,) = ctx.saved_tensors
        if ctx.method == "gradient":
            return grad * d, None, None, None
        if ctx.method == "deconvnet":
            return grad.clamp_min(0), None, None, None
        return grad.clamp_min(0) * d, None, None, None


class _RuleRectifier(nn.Module):
    """Calls a rectifier (a module, or a function with its other arguments) out of place and
    applies the method's rule where the signal passes back through it. Its derivative is
    taken with autograd on the forward's input (the activations are elementwise), so the
    backward is pointwise arithmetic that `is_grads_batched` can vectorise."""

    def __init__(self, fn, method: str, in_place: bool, kwargs: dict) -> None:
        super().__init__()
        self.fn, self.method, self.in_place, self.kwargs = fn, method, in_place, kwargs

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            y = self.fn(xx.clone(), *args, **self.kwargs)  # the clone takes an in-place write
            (d,) = torch.autograd.grad(y.sum(), xx)
        return _RuleActivation.apply(x, y.detach(), d, self.method)


_RELU_FUNCS = {torch.relu, torch.relu_, nn.functional.relu, nn.functional.relu_}
_IN_PLACE_FUNCS = {torch.relu_, nn.functional.relu_}
# rectifiers: unbounded above (or clipped, ReLU6/Hardtanh) and (nearly) flat below 0
_RECTIFIER_MODULES = (nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
                      nn.SiLU, nn.Mish, nn.Hardswish, nn.Softplus)
_F = nn.functional
_RECTIFIER_FUNCS = {_F.relu6, _F.hardtanh, _F.leaky_relu, _F.prelu, _F.rrelu, _F.elu, _F.celu, _F.selu,
                    _F.gelu, _F.silu, _F.mish, _F.hardswish, _F.softplus, torch.selu, torch.celu, torch.prelu}
_IN_PLACE_RECTIFIER_FUNCS = {_F.hardtanh_, _F.leaky_relu_, _F.rrelu_, _F.elu_, _F.celu_, torch.selu_,
                             torch.celu_, torch.rrelu_}


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return (node.op == "call_module" and isinstance(modules.get(str(node.target)), nn.ReLU)) or \
           (node.op == "call_function" and node.target in _RELU_FUNCS) or \
           (node.op == "call_method" and node.target in ("relu", "relu_"))


def _is_in_place(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the ReLU node rectifies its input tensor itself (nn.ReLU(inplace=True),
    x.relu_(), torch.relu_, F.relu_, F.relu(x, inplace=True))."""
    if node.op == "call_module":
        return bool(getattr(modules[str(node.target)], "inplace", False))
    if node.op == "call_method":
        return node.target == "relu_"
    if node.target in _IN_PLACE_FUNCS:
        return True
    return node.target is nn.functional.relu and _inplace_argument(node)


def _rectifier(node: fx.Node, modules: dict[str, nn.Module], method: str) -> _RuleRectifier | None:
    """The rule-aware stand-in for a rectifier other than ReLU, or None if `node` is not one."""
    if node.op == "call_module" and isinstance(modules.get(str(node.target)), _RECTIFIER_MODULES):
        module = modules[str(node.target)]
        return _RuleRectifier(module, method, bool(getattr(module, "inplace", False)), {})
    if node.op == "call_function" and node.target in _RECTIFIER_FUNCS | _IN_PLACE_RECTIFIER_FUNCS:
        if any(isinstance(v, fx.Node) for v in node.kwargs.values()):
            return None  # a keyword given by a traced value: left as the gradient (no torch model does this)
        in_place = node.target in _IN_PLACE_RECTIFIER_FUNCS or _inplace_argument(node)
        return _RuleRectifier(node.target, method, in_place, dict(node.kwargs))
    return None


def _inplace_argument(node: fx.Node) -> bool:
    """The `inplace` argument of a functional call, given by keyword or by position."""
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a builtin without a Python signature has no `inplace`
        return False
    return bool(bound.arguments.get("inplace", False))


def _later_users(node: fx.Node, value: fx.Node) -> list[fx.Node]:
    """The users of `value` that come after `node` in graph order."""
    users, n = set(value.users), node.next
    later: list[fx.Node] = []
    while n.op != "root" and len(later) < len(users):
        if n in users:
            later.append(n)
        n = n.next
    return later


def _swap_module(gm: fx.GraphModule, node: fx.Node, name: str, module: nn.Module, given: dict) -> None:
    """`node` computed by `module` (added as `name`) on its first argument, `given` as keywords. A
    module's node keeps its place (a mined layer is found by it); a call's is replaced."""
    gm.add_submodule(name, module)
    if node.op == "call_module":
        node.target = name
        return
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node.args[0] if node.args else node.kwargs["input"],), given)
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    identities = gm.meta.get("identities", {})
    identities.update({n: new for n, was in identities.items() if was is node})
    gm.graph.erase_node(node)


def with_rule(model: nn.Module, method: str, sample: tuple[int, ...] | None = None) -> fx.GraphModule:
    """A traced copy of the graph (parameters shared) with every ReLU swapped for the rule; `sample`:
    one input's shape, for a forward traceable only at its size (`graph.trace`).

    The rule is out of place, so an in-place ReLU's effect on its input is kept by giving
    the rule's output to every later reader of that input: `y.relu_(); return conv(y)`
    (result unused) feeds the rectified y to the conv, as the model does."""
    gm = trace(model, "for deconvolution", sample)  # in eval mode: `self.training` branches as they run here
    modules = dict(gm.named_modules())
    for i, node in enumerate(list(gm.graph.nodes)):
        if (soft := _softmax_rule(node, modules)) is not None:
            _swap_module(gm, node, f"_rule_softmax_{i}", soft, {})
            continue
        if (pool := pool_rule(node, modules)) is not None:
            _swap_module(gm, node, f"_rule_pool_{i}", *pool)
            continue
        rectifier = _rectifier(node, modules, method)
        if rectifier is None and not _is_relu(node, modules):
            continue
        source = node.args[0]
        with gm.graph.inserting_after(node):
            if rectifier is None:
                new = gm.graph.call_function(_rule_relu, (source, method))
            else:
                name = f"_rule_rectifier_{i}"
                gm.add_submodule(name, rectifier)
                new = gm.graph.call_module(name, (source, *node.args[1:]))
        new.meta.update(node.meta)  # the module it belongs to (module_outputs reads it)
        in_place = rectifier.in_place if rectifier is not None else _is_in_place(node, modules)
        if isinstance(source, fx.Node) and in_place:
            for user in _later_users(new, source):
                user.replace_input_with(source, new)
        node.replace_all_uses_with(new)
        identities = gm.meta.get("identities", {})  # an empty Sequential fed by the ReLU outputs the rule now
        identities.update({name: new for name, was in identities.items() if was is node})
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm
