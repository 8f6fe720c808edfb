"""Partitions of the target list for scheduled grow-and-prune (S-GaP, P-GaP).

A partition ``P_i`` is a group of targets (prunable tensors, see :mod:`.targets`). GaP grows one
partition (or, in P-GaP, one per machine) while every other target stays sparse. Partitions are
disjoint and together cover the target list; every built-in scheme also keeps them contiguous in
target order (``model.modules()`` order). ``kappa`` (κ) is the number of partitions.

Name keys (computed from a fully qualified parameter or state-dict name, split at dots; a
*numeric component* is one made only of the digits 0-9):

* **block key**: the name up to and including its first numeric component
  (``layer1.0.conv1.weight`` -> ``layer1.0``, ``layer2.0.downsample.0.weight`` -> ``layer2.0``,
  ``encoder.layers.3.fc1.weight`` -> ``encoder.layers.3``). A name without a numeric component
  has its module path as block key, i.e. the name without its last component
  (``fc.weight`` -> ``fc``, ``conv1.weight`` -> ``conv1``, ``bn1.running_mean`` -> ``bn1``,
  ``encoder.layer_norm.weight`` -> ``encoder.layer_norm``; a root-level ``weight`` -> ``""``).
* **stage key**: the part before the first numeric component (``layer1.0.conv1.weight`` ->
  ``layer1``, ``encoder.layers.3.fc1.weight`` -> ``encoder.layers``, ``0.weight`` -> ``""``);
  ``None`` for a name without a numeric component.
* A **numbered** target has a numeric component. A **block** is a maximal run of consecutive
  numbered targets with the same block key; a **stage** is a maximal run of consecutive numbered
  targets with the same stage key. Unnumbered targets before the first block (the stem, e.g.
  ``conv1.weight``) join the first block/stage; all other unnumbered targets (the head, e.g.
  ``fc.weight``, or one between two blocks) join the block/stage before them.

Schemes of :func:`partition_targets` (units: "tensors" are targets, "weights" are elements):

* ``"layers"``: κ contiguous groups of targets whose sizes differ by at most 1, larger first.
* ``"balanced"``: κ contiguous groups whose largest weight count is as small as possible (exact);
  among the optimal splits, the one whose groups are longest from the front (lexicographically
  largest group sizes).
* ``"blocks"``: κ contiguous groups of whole blocks whose block counts differ by at most 1,
  larger first. ResNet-50 (16 bottlenecks), κ=4: ``conv1 + layer1.0-2 + layer2.0 |
  layer2.1-3 + layer3.0 | layer3.1-4 | layer3.5 + layer4.0-2 + fc``.
* ``"stages"``: one group per stage, in order (κ must be omitted or equal the stage count).
* a key of :data:`PRESETS`, or an explicit sequence of regexes: partition ``i`` holds the targets
  whose name matches regex ``i`` (``re.search``); every target must match exactly one regex and
  every regex at least one target; κ is the number of regexes. Such partitions need not be
  contiguous; each lists its targets in target order.

Ownership (P-GaP combine, reference §1.4: a machine sends back every parameter of the layers it
grew, biases and norms included). :func:`ownership` gives each state-dict key the index of the
partition whose worker it is merged from, by the first rule that applies:

1. a **target** belongs to its partition;
2. a **companion** tensor belongs to the owner of the conv/linear ``weight`` it goes with: every
   other tensor of a conv/linear module (its ``bias``), and, when ``model`` is given, every tensor
   of a norm module (weight, bias, running_mean, running_var, num_batches_tracked) that a
   conv/linear *feeds* (see :func:`norm_feeders`: ``layer1.0.bn1`` <- ``layer1.0.conv1``, the stem's
   ``bn1`` <- ``conv1``, ``downsample.1`` <- ``downsample.0``). Without ``model`` only the tensors
   of a module holding a target (``fc.bias`` with ``fc.weight``) are companions;
3. otherwise the tensor belongs to its **enclosing block** (its block key, as the reference copies
   a whole Transformer layer): the partition holding the *first* target (in target order) with
   that block key; e.g. a pre-activation block's ``bn1`` (fed by a residual sum, not a conv) or a
   Transformer layer's attention LayerNorm;
4. a key whose block key no target has is an **orphan** (owner ``None``), e.g. a Transformer's
   final ``encoder.layer_norm.*`` and its embeddings, or a dense stem conv and its norm; P-GaP
   merges orphans from the worker that grows P1 (index 0).

So a norm always shares the owner of the conv that feeds it, even when a scheme puts the convs of
one block in different partitions (``"layers"``, ``"balanced"`` and regex lists can;
:func:`split_blocks` lists such blocks and ``plan`` prints them).

Invariants of every result of :func:`partition_targets`: ``len(result) == κ``; ``result[i].index
== i``; no partition is empty; the ``target_indices`` are ascending, pairwise disjoint and cover
``range(len(targets))``; ``numel`` is the sum of the partition's target weights, so the numels add
up to the total target weight count. Every bad input raises a one-line :class:`SparsityError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from .errors import SparsityError
from .targets import NORM_TYPES, Target

SCHEMES: tuple[str, ...] = ("layers", "balanced", "blocks", "stages")
"""The computed schemes; :data:`PRESETS` adds named regex lists."""

_ENC = r"(?:^|\.)encoder\.layers\."
_DEC = r"(?:^|\.)decoder\.layers\."
_SSD_BACKBONE = r"(?:^|\.)feature_extractor\.feature_extractor\."

PRESETS: dict[str, tuple[str, ...]] = {
    # ResNet-50 best reading (A) of the reference: one partition per residual stage; the stem
    # conv (if a target) joins layer1, the fc (if a target) joins layer4.
    "resnet_stages": (r"^(conv1|layer1)\.", r"^layer2\.", r"^layer3\.", r"^(layer4|fc)\."),
    # ResNet-50 reading (B): 4 bottlenecks per partition over torchvision's [3, 4, 6, 3] blocks;
    # equal to scheme "blocks" with κ=4.
    "resnet50_blocks": (
        r"^(conv1|layer1)\.|^layer2\.0\.",
        r"^layer2\.[1-3]\.|^layer3\.0\.",
        r"^layer3\.[1-4]\.",
        r"^layer3\.5\.|^(layer4|fc)\.",
    ),
    # Transformer 6+6 layers (reference §1.5); names encoder.layers.N / decoder.layers.N, with or
    # without a prefix such as "model.".
    "transformer_2": (r"(?:^|\.)encoder\.", r"(?:^|\.)decoder\."),
    "transformer_3": (
        _ENC + r"[0-3]\.",
        _ENC + r"[45]\.|" + _DEC + r"[01]\.",
        _DEC + r"[2-5]\.",
    ),
    # The README quick start's "forward GaP" split: {encoder}, {decoder 0-2}, {decoder 3-5}.
    "transformer_3_forward": (r"(?:^|\.)encoder\.", _DEC + r"[0-2]\.", _DEC + r"[3-5]\."),
    "transformer_6": (
        _ENC + r"[01]\.",
        _ENC + r"[23]\.",
        _ENC + r"[45]\.",
        _DEC + r"[01]\.",
        _DEC + r"[23]\.",
        _DEC + r"[45]\.",
    ),
    # PointNet++ part segmentation (the common implementation's names): by set-abstraction (SA) and
    # feature-propagation (FP) level; the head convs (conv1, conv2) join the last FP level.
    "pointnet2_2": (r"^sa\d\.", r"^(fp\d|conv\d)\."),
    "pointnet2_3": (r"^sa[12]\.", r"^(sa3|fp3)\.", r"^(fp[12]|conv\d)\."),
    "pointnet2_4": (r"^sa1\.", r"^sa2\.", r"^(sa3|fp3)\.", r"^(fp[12]|conv\d)\."),
    # SSD in NVIDIA's layout (feature_extractor.feature_extractor.N = the ResNet stem and stages, then the
    # additional blocks and the loc/conf heads): by backbone stage, extra feature blocks and heads.
    "ssd_2": (_SSD_BACKBONE, r"(?:^|\.)(additional_blocks|loc|conf)\."),
    "ssd_3": (_SSD_BACKBONE, r"(?:^|\.)additional_blocks\.", r"(?:^|\.)(loc|conf)\."),
    # the backbone's stem + first two stages | its last stage (layer3 in SSD300-R50) | extra blocks | heads
    "ssd_4": (_SSD_BACKBONE + r"[0-5]\.", _SSD_BACKBONE + r"([6-9]|\d\d+)\.", r"(?:^|\.)additional_blocks\.",
              r"(?:^|\.)(loc|conf)\."),
}

_NUMERIC = re.compile(r"[0-9]+")


# ---- name keys ------------------------------------------------------------------------------
def _first_numeric(parts: list[str]) -> int | None:
    for i, part in enumerate(parts):
        if _NUMERIC.fullmatch(part):
            return i
    return None


def block_key(name: str) -> str:
    """The name up to and including its first numeric component, else its module path."""
    parts = name.split(".")
    i = _first_numeric(parts)
    if i is None:
        return ".".join(parts[:-1])
    return ".".join(parts[: i + 1])


def stage_key(name: str) -> str | None:
    """The name before its first numeric component; ``None`` if it has no numeric component."""
    parts = name.split(".")
    i = _first_numeric(parts)
    return None if i is None else ".".join(parts[:i])


# ---- the partition type ---------------------------------------------------------------------
@dataclass(frozen=True)
class Partition:
    """One group of targets: ``index`` is 0-based (shown as ``P{index + 1}``), ``numel`` the
    number of weights (elements) of its targets; ``target_indices`` index the target list."""

    index: int
    target_indices: tuple[int, ...]
    target_names: tuple[str, ...]
    numel: int

    def __post_init__(self) -> None:
        if not self.target_indices:
            raise SparsityError(f"partition P{self.index + 1} is empty; every partition needs a target")
        if len(self.target_indices) != len(self.target_names):
            raise SparsityError(
                f"partition P{self.index + 1} has {len(self.target_indices)} indices"
                f" but {len(self.target_names)} names"
            )

    @property
    def label(self) -> str:
        """E.g. ``P1 (conv1-layer2.0, 13 tensors, 588,800 weights)``: block keys of its first
        and last target, tensor count, weight count."""
        first, last = block_key(self.target_names[0]), block_key(self.target_names[-1])
        span = first if first == last else f"{first}-{last}"
        n = len(self.target_indices)
        return f"P{self.index + 1} ({span}, {n} tensor{'' if n == 1 else 's'}, {self.numel:,} weights)"


# ---- helpers ---------------------------------------------------------------------------------
def _check_kappa(kappa: object) -> None:
    if isinstance(kappa, bool) or not isinstance(kappa, int) or kappa < 1:
        raise SparsityError(f"kappa={kappa!r} must be an integer >= 1")


def _need_kappa(scheme: str, kappa: int | None, available: int, what: str) -> int:
    if kappa is None:
        raise SparsityError(f"scheme {scheme!r} needs kappa, an integer in 1..{available} (the number of {what})")
    if kappa > available:
        where = "" if what == "targets" else " of these targets"
        raise SparsityError(f"kappa={kappa} exceeds the {available} {what}{where} (valid: 1..{available})")
    return kappa


def _equal_sizes(n: int, k: int) -> list[int]:
    """``k`` sizes summing to ``n`` that differ by at most 1, larger first."""
    q, r = divmod(n, k)
    return [q + 1] * r + [q] * (k - r)


def _balanced_sizes(weights: Sequence[int], k: int) -> list[int]:
    """Group sizes of the contiguous split into ``k`` non-empty groups minimising the largest
    group sum; among optimal splits the groups are as long as possible from the front."""
    n = len(weights)

    def groups_needed(limit: int) -> int:
        count, acc = 1, 0
        for w in weights:
            if acc + w > limit:
                count, acc = count + 1, w
            else:
                acc += w
        return count

    lo, hi = max(weights), sum(weights)
    while lo < hi:  # smallest feasible largest-group sum
        mid = (lo + hi) // 2
        if groups_needed(mid) <= k:
            hi = mid
        else:
            lo = mid + 1
    sizes: list[int] = []
    start = 0
    for g in range(k - 1):
        # Longest group from ``start`` with sum <= lo that leaves one target per later group;
        # taking the longest never makes the rest harder to split (greedy exchange argument).
        end, acc = start, 0
        last_allowed = n - (k - g - 1)
        while end < last_allowed and acc + weights[end] <= lo:
            acc += weights[end]
            end += 1
        sizes.append(end - start)
        start = end
    sizes.append(n - start)
    return sizes


def _units(names: Sequence[str], key: Callable[[str], str | None]) -> list[list[int]]:
    """Maximal runs of consecutive numbered names with equal ``key``; unnumbered names before
    the first run join it, all other unnumbered names join the run before them."""
    units: list[list[int]] = []
    leading: list[int] = []
    previous: str | None = None
    for i, name in enumerate(names):
        if _first_numeric(name.split(".")) is None:
            (units[-1] if units else leading).append(i)
            continue
        k = key(name)
        if not units or k != previous:
            units.append([])
        units[-1].append(i)
        previous = k
    if units:
        units[0][:0] = leading
    return units


def _unit_stage(names: Sequence[str], unit: Sequence[int]) -> str:
    return next(repr(k) for k in map(stage_key, (names[i] for i in unit)) if k is not None)


def _no_units_error(scheme: str, n: int, what: str) -> SparsityError:
    return SparsityError(
        f"scheme {scheme!r} found 0 {what} in these {n} targets: no name has a numeric component"
        " (like layer1.0.conv1.weight); use 'layers', 'balanced' or a regex list"
    )


def _compile_all(patterns: Sequence[str], source: str) -> list[re.Pattern[str]]:
    compiled = []
    for i, pattern in enumerate(patterns):
        if not isinstance(pattern, str):
            raise SparsityError(f"partition regex {i} of {source} is {pattern!r}; regexes must be strings")
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise SparsityError(f"partition regex {i} ({pattern!r}) of {source} is not a valid regex: {exc}") from None
    return compiled


def _regex_groups(names: Sequence[str], patterns: Sequence[str], source: str) -> list[list[int]]:
    compiled = _compile_all(patterns, source)
    groups: list[list[int]] = [[] for _ in compiled]
    for i, name in enumerate(names):
        hits = [j for j, rx in enumerate(compiled) if rx.search(name)]
        if not hits:
            raise SparsityError(
                f"target {name!r} matches none of the {len(compiled)} partition regexes of {source}"
            )
        if len(hits) > 1:
            a, b = hits[0], hits[1]
            raise SparsityError(
                f"target {name!r} matches partition regexes {a} ({patterns[a]!r}) and {b} ({patterns[b]!r})"
                f" of {source}; each target must match exactly one"
            )
        groups[hits[0]].append(i)
    for j, group in enumerate(groups):
        if not group:
            raise SparsityError(f"partition regex {j} ({patterns[j]!r}) of {source} matches no target")
    return groups


def _contiguous(sizes: Sequence[int]) -> list[list[int]]:
    groups, start = [], 0
    for size in sizes:
        groups.append(list(range(start, start + size)))
        start += size
    return groups


# ---- public API -----------------------------------------------------------------------------
def partition_targets(
    targets: Sequence[Target], scheme: str | Sequence[str], kappa: int | None = None
) -> list[Partition]:
    """Split ``targets`` into κ partitions by ``scheme`` (see the module docstring).

    ``scheme`` is one of :data:`SCHEMES`, a key of :data:`PRESETS`, or a sequence of regexes
    (one per partition). ``kappa`` is required for ``"layers"``, ``"balanced"`` and ``"blocks"``;
    for ``"stages"``, presets and regex lists it may be omitted and, if given, must equal the
    number of stages / regexes.
    """
    targets = list(targets)
    if not targets:
        raise SparsityError("there are no targets to partition; the selection must hold at least one")
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise SparsityError(f"target {dup!r} is listed twice; target names must be unique")
    if kappa is not None:
        _check_kappa(kappa)
    n = len(targets)

    if isinstance(scheme, str):
        if scheme == "layers":
            k = _need_kappa(scheme, kappa, n, "targets")
            groups = _contiguous(_equal_sizes(n, k))
        elif scheme == "balanced":
            k = _need_kappa(scheme, kappa, n, "targets")
            groups = _contiguous(_balanced_sizes([t.numel for t in targets], k))
        elif scheme == "blocks":
            units = _units(names, block_key)
            if not units:
                raise _no_units_error(scheme, n, "blocks")
            k = _need_kappa(scheme, kappa, len(units), "blocks")
            groups = []
            for size in _equal_sizes(len(units), k):
                chunk, units = units[:size], units[size:]
                groups.append([i for unit in chunk for i in unit])
        elif scheme == "stages":
            units = _units(names, stage_key)
            if not units:
                raise _no_units_error(scheme, n, "stages")
            if kappa is not None and kappa != len(units):
                shown = ", ".join(_unit_stage(names, u) for u in units)
                raise SparsityError(
                    f"kappa={kappa} does not match the {len(units)} stages of these targets ({shown});"
                    f" scheme 'stages' makes one partition per stage"
                )
            groups = units
        elif scheme in PRESETS:
            groups = _preset_groups(names, PRESETS[scheme], f"preset {scheme!r}", kappa)
        else:
            valid = ", ".join(repr(s) for s in (*SCHEMES, *PRESETS))
            raise SparsityError(f"partition scheme {scheme!r} is unknown; valid: {valid}, or a list of regexes")
    elif isinstance(scheme, (bytes, bytearray)) or not isinstance(scheme, Iterable):
        raise SparsityError(f"partition scheme {scheme!r} must be a scheme name or a list of regexes")
    else:
        patterns = list(scheme)
        if not patterns:
            raise SparsityError("the partition regex list is empty; give one regex per partition")
        groups = _preset_groups(names, patterns, "the regex list", kappa)

    return [
        Partition(
            index=i,
            target_indices=tuple(group),
            target_names=tuple(names[j] for j in group),
            numel=sum(targets[j].numel for j in group),
        )
        for i, group in enumerate(groups)
    ]


def _preset_groups(names: Sequence[str], patterns: Sequence[str], source: str, kappa: int | None) -> list[list[int]]:
    if kappa is not None and kappa != len(patterns):
        raise SparsityError(f"kappa={kappa} does not match the {len(patterns)} partition regexes of {source}")
    return _regex_groups(names, patterns, source)


_FEEDER_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)
"""Modules whose output a norm can be paired with (rule 2 of ownership)."""


def _out_channels(module: nn.Module) -> int | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


def _norm_channels(module: nn.Module) -> int | None:
    for attr in ("num_features", "num_channels"):  # BatchNorm/InstanceNorm, GroupNorm
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)  # LayerNorm, RMSNorm: channels come first
    if isinstance(shape, (tuple, list)) and shape and isinstance(shape[0], int):
        return shape[0]
    return None


def _has_state(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None or next(module.buffers(), None) is not None


def norm_feeders(model: nn.Module) -> dict[str, str]:
    """Module name of every norm module of ``model`` that a conv/linear feeds -> that conv/linear's
    module name (names as ``model.named_modules()`` gives them).

    The rule is structural, from registration order (no forward pass, so it works for any model,
    including ones on the meta device): within one parent module, the norm's feeder is the nearest
    child registered *before* it that has parameters or buffers (stateless children such as ReLU,
    dropout or pooling are skipped), provided that child is a conv (``nn.Conv*``, including
    transposed) or ``nn.Linear`` whose output channel count (``out_channels``/``out_features``)
    equals the norm's (``num_features``, ``num_channels`` or ``normalized_shape[0]``). A norm
    registered first in its parent, or after another kind of module (a block, an attention
    module, another norm), has no feeder: e.g. a pre-activation block's ``bn1``, WRN's head
    ``bn1`` (after ``block3``), a Transformer's ``self_attn_layer_norm``. Norms are the modules of
    :data:`~.targets.NORM_TYPES` and any module whose class name ends in ``Norm``/``Norm1d``/...

    Limit: registration order does not see residual sums, so a post-norm Transformer layer's
    ``final_layer_norm`` registered right after ``fc2`` (same width) pairs with ``fc2`` although it
    normalises ``x + fc2(...)``; both are in one layer, so this matters only if a scheme splits it.
    """
    feeders: dict[str, str] = {}
    for parent_name, parent in model.named_modules():
        previous: tuple[str, nn.Module] | None = None
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if _is_norm(child) and previous is not None:
                channels = _out_channels(previous[1])
                if channels is not None and channels == _norm_channels(child):
                    feeders[name] = previous[0]
            if _has_state(child):
                previous = (name, child)
    return feeders


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES) or re.search(r"Norm(\d+d?)?$", type(module).__name__) is not None


def _target_partitions(partitions: Sequence[Partition]) -> tuple[dict[str, int], dict[str, int]]:
    """(target name -> partition index, block key -> partition of that key's first target)."""
    by_name: dict[str, int] = {}
    first: dict[str, tuple[int, int]] = {}  # block key -> (target index, partition index)
    for part in partitions:
        for t_index, name in zip(part.target_indices, part.target_names):
            if name in by_name:
                raise SparsityError(
                    f"target {name!r} is in partitions P{by_name[name] + 1} and P{part.index + 1};"
                    " partitions must be disjoint"
                )
            by_name[name] = part.index
            key = block_key(name)
            if key not in first or t_index < first[key][0]:
                first[key] = (t_index, part.index)
    return by_name, {key: p for key, (_, p) in first.items()}


def _module_path(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _weight_of(path: str) -> str:
    return f"{path}.weight" if path else "weight"


def partition_owner(name: str, partitions: Sequence[Partition], model: nn.Module | None = None) -> int | None:
    """Index of the partition that owns parameter/buffer ``name`` in a P-GaP merge, or ``None``
    for an orphan; :func:`ownership` for one key."""
    return ownership([name], partitions, model)[name]


def ownership(
    state_dict_keys: Iterable[str], partitions: Sequence[Partition], model: nn.Module | None = None
) -> dict[str, int | None]:
    """The owner partition (0-based index) of every key, in the given order; ``None`` for orphans.

    Rules (module docstring, "Ownership"): a target belongs to its partition; a conv/linear's other
    tensors and, with ``model``, the tensors of the norm its output feeds (:func:`norm_feeders`)
    share the owner of that conv/linear's ``weight``; any other key belongs to the partition of the
    first target with its block key, else to no partition. ``model`` must be the module whose
    state dict gave the keys (same names); pass it, or norms fall back to the block rule.
    Invariant: with ``model``, every tensor of a fed norm has the owner of its feeder's weight.
    """
    by_name, by_block = _target_partitions(partitions)
    modules: dict[str, nn.Module] = dict(model.named_modules()) if model is not None else {}
    feeders = norm_feeders(model) if model is not None else {}
    target_modules = {_module_path(name) for name in by_name}

    def basic(key: str) -> int | None:  # rules 1, 3, 4
        return by_name[key] if key in by_name else by_block.get(block_key(key))

    def owner(key: str) -> int | None:
        if key in by_name:
            return by_name[key]
        path = _module_path(key)
        if path in feeders:  # rule 2: a fed norm follows its conv/linear
            return basic(_weight_of(feeders[path]))
        if path in target_modules or isinstance(modules.get(path), _FEEDER_TYPES):  # rule 2: a bias
            return basic(_weight_of(path))
        return basic(key)

    return {key: owner(key) for key in state_dict_keys}


def split_blocks(partitions: Sequence[Partition]) -> list[tuple[str, tuple[tuple[int, tuple[str, ...]], ...]]]:
    """The blocks (targets with one block key) that lie in more than one partition:
    ``(block key, ((partition index, target names), ...))``, blocks in order of their first target,
    and within a block the partitions in order of their first target of it, names in target
    order. ``"blocks"``, ``"stages"`` and the ResNet/Transformer presets never split a block;
    ``"layers"``, ``"balanced"`` and regex lists can."""
    placed = sorted(
        (t_index, part.index, name)
        for part in partitions
        for t_index, name in zip(part.target_indices, part.target_names)
    )
    blocks: dict[str, dict[int, list[str]]] = {}  # insertion order = target order
    for _, p_index, name in placed:
        blocks.setdefault(block_key(name), {}).setdefault(p_index, []).append(name)
    return [
        (key, tuple((p_index, tuple(names)) for p_index, names in groups.items()))
        for key, groups in blocks.items()
        if len(groups) > 1
    ]


def split_block_notes(partitions: Sequence[Partition]) -> list[str]:
    """One line per block :func:`split_blocks` finds, e.g. ``note: P2/P3 split block layer3.0
    (conv1, conv2 in P2; conv3, downsample.0 in P3)``; target names are shown relative to the
    block key, without a trailing ``.weight``. Each norm still follows the conv that feeds it."""
    lines = []
    for key, groups in split_blocks(partitions):
        tags = "/".join(f"P{p + 1}" for p, _ in groups)
        where = "; ".join(f"{', '.join(_short_name(n, key) for n in names)} in P{p + 1}" for p, names in groups)
        lines.append(f"note: {tags} split block {key} ({where})")
    return lines


def _short_name(name: str, key: str) -> str:
    """``name`` relative to block key ``key``, without a trailing ``.weight``."""
    rest = name[len(key) + 1:] if key and name.startswith(key + ".") else name
    return rest.removesuffix(".weight")


def format_partitions(partitions: Sequence[Partition], targets: Sequence[Target]) -> str:
    """One aligned line per partition: ``P{i}``, tensor count, weight count, share of all target
    weights, first and last target name."""
    targets = list(targets)
    for part in partitions:
        for t_index, name in zip(part.target_indices, part.target_names):
            if not 0 <= t_index < len(targets) or targets[t_index].name != name:
                raise SparsityError(
                    f"partition P{part.index + 1} names target {name!r} at index {t_index},"
                    f" which is not in these {len(targets)} targets"
                )
    total = sum(t.numel for t in targets)
    tag_w = max(len(f"P{p.index + 1}") for p in partitions) if partitions else 2
    count_w = max((len(str(len(p.target_indices))) for p in partitions), default=1)
    numel_w = max((len(f"{p.numel:,}") for p in partitions), default=1)
    lines = []
    for p in partitions:
        n = len(p.target_indices)
        share = p.numel / total if total else 0.0
        span = p.target_names[0] if n == 1 else f"{p.target_names[0]} .. {p.target_names[-1]}"
        lines.append(
            f"{f'P{p.index + 1}':<{tag_w}}  {n:>{count_w}} tensor{' ' if n == 1 else 's'}"
            f"  {p.numel:>{numel_w},} weights  {share:>7.2%}  {span}"
        )
    return "\n".join(lines)
