r"""Which parameters of a model may become sparse.

A target is one parameter tensor, named by its fully qualified name (``layer1.0.conv1.weight``).
The default selection is the ``weight`` of every Conv1d/Conv2d/Conv3d and Linear module, in
``model.modules()`` order, which is also the order of the GPMT reference code's mask files.
Biases, norms and embeddings are never targets unless a pattern names them.

What "names" means (checked by :func:`select_targets`, so a broad pattern fails loudly instead of
silently pruning a BatchNorm scale). A parameter is *special* when it is a bias (its own name is
``bias`` or ends in ``_bias``), belongs to a normalisation module (``nn.BatchNorm*``,
``nn.LayerNorm``, ``nn.GroupNorm``, ``nn.InstanceNorm*``, ``nn.RMSNorm``, or a module whose class
name ends in ``Norm``, ``Norm<k>`` or ``Norm<k>d``, e.g. ``LlamaRMSNorm``, ``FrozenBatchNorm2d``)
or to an embedding (``nn.Embedding``, ``nn.EmbeddingBag``), or has ``embed`` in its own name
(``pos_embed``). An include selector may select a special parameter only if it names it:

* a module type (it selects ``weight``) names the parameters of the modules of that type when
  the type itself is a norm or embedding type (``nn.BatchNorm2d`` yes, ``nn.Module`` no);
* a regex names a special parameter when it stops matching once a part that makes the
  parameter special is replaced by a decoy: the parameter's own name for biases and ``embed``
  names (``bn1.bias`` -> ``bn1.weight``), and the module's own name component for norms and
  embeddings, replaced by ``z`` and by a same-shaped decoy (letters -> ``z``, digits + 1):
  ``layer1.0.bn1.weight`` -> ``layer1.0.z.weight``, ``layer1.0.zz2.weight``. So ``bn1\.weight``,
  ``norm``, ``\.bias$`` and ``^embed\.`` name what they match, while ``.*``, ``weight`` or
  ``^layer1\.`` do not. Naming one reason is enough (``bias`` selects a BatchNorm's bias too).

A selector that would select a special parameter without naming it raises ``SparsityError``
naming the first such parameter. The empty regex ``""`` (it matches every name) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import SparsityError

DEFAULT_TARGET_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t for t in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
                getattr(nn, "RMSNorm", None)) if t is not None
)
"""Normalisation modules (``_NormBase`` covers BatchNorm, SyncBatchNorm and InstanceNorm)."""

EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)

Selector = type[nn.Module] | str
"""A module type (selects that module's ``weight``) or a regex searched in parameter names."""


@dataclass(frozen=True)
class Target:
    """One parameter that may be pruned; ``name`` is its fully qualified parameter name."""

    name: str
    module_name: str
    param: nn.Parameter = field(compare=False, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def numel(self) -> int:
        return self.param.numel()


def _as_selectors(spec: Selector | Iterable[Selector] | None) -> list[Selector]:
    if spec is None:
        return []
    if isinstance(spec, (str, type)):
        return [spec]
    selectors = list(spec)
    for item in selectors:
        if not (isinstance(item, str) or (isinstance(item, type) and issubclass(item, nn.Module))):
            raise SparsityError(f"selector {item!r} must be an nn.Module subclass or a regex string")
    return selectors


def _compile(pattern: str, role: str) -> re.Pattern[str]:
    if pattern == "":
        raise SparsityError(f"{role} pattern '' is empty: it would match every parameter name; give a regex that "
                            "names the parameters (e.g. 'fc\\.weight') or a module type (nn.Linear)")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise SparsityError(f"{role} pattern {pattern!r} is not a valid regex: {exc}") from None


def _matches(selector: Selector, regex: re.Pattern[str] | None, module: nn.Module, pname: str, fqn: str) -> bool:
    if regex is not None:
        return regex.search(fqn) is not None
    return isinstance(module, selector) and pname == "weight"


_NORM_CLASS_NAME = re.compile(r"Norm(\d+d|\d*)$")
"""Class names of custom norm modules: ``LayerNorm2d``, ``LlamaRMSNorm``, ``FrozenBatchNorm2d``, ``GroupNorm32``."""


def _is_norm_type(module_type: type) -> bool:
    return issubclass(module_type, NORM_TYPES) or _NORM_CLASS_NAME.search(module_type.__name__) is not None


def _is_norm(module: nn.Module) -> bool:
    return _is_norm_type(type(module))


def _special_kinds(module: nn.Module, pname: str) -> list[str]:
    """Why parameter ``pname`` of ``module`` is never a target unless named: ``bias``, ``norm``, ``embedding``."""
    kinds = []
    if pname == "bias" or pname.endswith("_bias"):
        kinds.append("bias")
    if _is_norm(module):
        kinds.append("norm")
    if isinstance(module, EMBEDDING_TYPES) or "embed" in pname.lower():
        kinds.append("embedding")
    return kinds


def _component_decoys(component: str) -> list[str]:
    """``z`` and a same-shaped decoy of a module name component (letters -> z, digits + 1 mod 10)."""
    shaped = "".join("z" if c.isalpha() else str((int(c) + 1) % 10) if c.isdigit() else c for c in component)
    return [d if d != component else d + "q" for d in ("z", shaped)]


def _decoys(kind: str, module: nn.Module, module_name: str, pname: str) -> list[str]:
    """Fully qualified names with the part of ``module_name.pname`` that makes it special of ``kind`` replaced."""
    prefix = f"{module_name}." if module_name else ""
    own_name = kind == "bias" or (kind == "embedding" and not isinstance(module, EMBEDDING_TYPES))
    if own_name:  # the parameter's own name makes it special: bias, in_proj_bias, pos_embed
        plain = pname[: -len("bias")] + "weight" if kind == "bias" and pname != "bias" else "weight"
        return [prefix + (plain if plain != pname else "z")]
    if not module_name:  # a root norm/embedding module: only a pattern anchored on the name names it
        return [f"z.{pname}"]
    head, _, last = module_name.rpartition(".")
    return [f"{head + '.' if head else ''}{decoy}.{pname}" for decoy in _component_decoys(last)]


def _names_special(selector: Selector, regex: re.Pattern[str] | None, module: nn.Module, module_name: str,
                   pname: str, kinds: list[str]) -> bool:
    """Whether ``selector`` names the special parameter ``module_name.pname`` (see the module docstring)."""
    if regex is None:  # a module type (it selects ``weight`` only): a norm or embedding type names its modules
        return _is_norm_type(selector) or issubclass(selector, EMBEDDING_TYPES)
    return any(not any(regex.search(d) for d in _decoys(kind, module, module_name, pname)) for kind in kinds)


def select_targets(
    model: nn.Module,
    include: Selector | Iterable[Selector] | None = None,
    exclude: Selector | Iterable[Selector] | None = None,
) -> list[Target]:
    """The model's prunable parameters in ``modules()`` order.

    ``include`` replaces the default selection (Conv1d/2d/3d and Linear weights); ``exclude``
    removes from it. Each selector is a module type (its ``weight``) or a regex searched in fully
    qualified parameter names. A selector that matches nothing, or an empty result, is an error,
    and so is an include selector that would select a bias, norm or embedding parameter without
    naming it (see the module docstring). A parameter shared by several modules is listed once,
    under its first name.
    """
    user_include = _as_selectors(include)
    includes = user_include or list(DEFAULT_TARGET_TYPES)
    excludes = _as_selectors(exclude)
    compiled = {
        ("include", i): _compile(s, "include") if isinstance(s, str) else None for i, s in enumerate(includes)
    } | {("exclude", i): _compile(s, "exclude") if isinstance(s, str) else None for i, s in enumerate(excludes)}
    used: set[tuple[str, int]] = set()
    seen: set[int] = set()
    targets: list[Target] = []
    for module_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            fqn = f"{module_name}.{pname}" if module_name else pname
            hit_in = [i for i, s in enumerate(includes) if _matches(s, compiled["include", i], module, pname, fqn)]
            hit_ex = [i for i, s in enumerate(excludes) if _matches(s, compiled["exclude", i], module, pname, fqn)]
            used.update(("include", i) for i in hit_in)
            used.update(("exclude", i) for i in hit_ex)
            if hit_in and not hit_ex:
                kinds = _special_kinds(module, pname)
                if kinds and user_include:
                    _check_named(fqn, kinds, module, module_name, pname,
                                 [(includes[i], compiled["include", i]) for i in hit_in])
                if not param.is_floating_point():
                    raise SparsityError(f"parameter {fqn!r} has dtype {param.dtype}; targets must be floating point")
                targets.append(Target(fqn, module_name, param))
    model_name = type(model).__name__
    for role, selectors in (("include", user_include), ("exclude", excludes)):
        for i, selector in enumerate(selectors):
            if (role, i) not in used:
                shown = selector.__name__ if isinstance(selector, type) else repr(selector)
                raise SparsityError(f"{role} selector {shown} matches no parameter of {model_name}")
    if not targets:
        raise SparsityError(f"the selection holds no prunable parameter of {model_name}")
    return targets


def _check_named(fqn: str, kinds: list[str], module: nn.Module, module_name: str, pname: str,
                 hits: list[tuple[Selector, re.Pattern[str] | None]]) -> None:
    """Raise unless one of the include selectors that select ``fqn`` names it explicitly."""
    if any(_names_special(s, rx, module, module_name, pname, kinds) for s, rx in hits):
        return
    selector = hits[0][0]
    shown = f"nn.{selector.__name__}" if isinstance(selector, type) else repr(selector)
    module_type = type(module).__name__
    if "norm" in kinds:
        what = f"a parameter of the norm module {module_name or '<root>'!r} ({module_type})"
    elif "embedding" in kinds:
        what = "an embedding parameter"
    else:
        what = "a bias"
    by_type = kinds != ["bias"] and pname == "weight" and getattr(nn, module_type, None) is type(module)
    how = f"the module type nn.{module_type} or " if by_type else ""
    raise SparsityError(
        f"include selector {shown} selects {fqn!r}, {what}, without naming it (biases, norms and embeddings are "
        f"never targets unless named): name it with {how}a regex such as '^{re.escape(fqn)}$', or narrow the "
        "selector or add it to targets.exclude")


def parameter_count(model: nn.Module) -> int:
    """Number of elements over all distinct parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def check_targets_belong(model: nn.Module, params: Sequence[torch.Tensor]) -> None:
    """Raise if any of ``params`` is not a parameter of ``model`` (by identity)."""
    owned = {id(p) for p in model.parameters()}
    for i, param in enumerate(params):
        if id(param) not in owned:
            raise SparsityError(f"mask {i} belongs to a parameter that is not part of {type(model).__name__}")
