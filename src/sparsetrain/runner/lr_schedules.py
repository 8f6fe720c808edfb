"""Learning-rate schedules as pure functions of the position in a run.

An :class:`LRSchedule` holds no mutable state: ``schedule.lr_at(t)`` depends only on
its fields and on ``t``. Resuming a run therefore gives exactly the same LR as an
uninterrupted run, and a ``plan`` command can print the schedule before training
(see :func:`describe`). The runner applies a value with :func:`set_lr`.

Units
-----
``t``, ``total``, ``warmup``, ``step_size`` and ``milestones`` are all in the same
*unit*, chosen by the caller:

* **per epoch** (GPMT fine-tuning, NVIDIA-style ImageNet recipes): ``t`` is the
  0-based epoch index ``e``; call ``lr_at(e)`` once before epoch ``e`` and keep the
  LR for the whole epoch. ``total`` is the number of epochs.
* **per iteration / update** (fairseq ``inverse_sqrt`` for the GaP Transformer, or
  a per-iteration cosine): ``t`` is the number of optimizer updates already done
  in this run (0 before the first update); call ``lr_at(t)`` before each update.
  ``total`` is the number of updates.

``t`` may be a float (e.g. ``epoch + i / iters_per_epoch`` for a smooth
per-iteration cosine measured in epochs); the formulas below are written for that
general case and reduce to the reference code for integer ``t``.

Kinds (W = ``warmup``, T = ``total``, b = ``base_lr``, m = ``min_lr``,
w0 = ``warmup_init_lr``)
-------------------------------------------------------------------------------
Warm-up shared by ``constant``, ``cosine``, ``linear`` and ``step`` (only when W >= 1),
for ``t < W``::

    lr = b * (t + 1) / W                      if w0 == 0   (GPMT: lr0*(e+1)/W)
    lr = w0 + (b - w0) * (t + 1) / W          if w0 > 0

so the first warm-up unit already trains at ``b / W`` (GPMT convention, not 0) and
the last one (``t = W - 1``) at exactly ``b``. For fractional ``t`` in ``(W-1, W)``
the ramp is capped at ``b``. Warm-up is *not* floored at ``min_lr``.

After warm-up (``W <= t < T``):

* ``constant``: ``lr = b``.
* ``cosine`` (GPMT): ``lr = m + (b - m) * 0.5 * (1 + cos(pi * (t - W) / (T - W)))``.
  With ``m = 0, W = 0`` this is torch's ``CosineAnnealingLR`` closed form with
  ``T_max = T``; the last unit ``t = T - 1`` is small but not zero
  (``b * sin(pi / (2T))**2``, about 1.75e-5 for b = 0.1024, T = 120).
* ``linear`` (GPMT README): ``lr = b - (t - W) / (T - W) * (b - m)``; with
  ``W = m = 0`` this is ``lr0 - (e / E) * lr0``. The last unit is ``m + (b - m) / (T - W)``.
* ``step`` (torch ``StepLR`` / ``MultiStepLR``): ``lr = max(m, b * gamma ** k)``
  where ``k = floor(t) // step_size`` (StepLR) or ``k`` = number of milestones
  ``<= t`` (MultiStepLR, ``bisect_right``). Decays are counted in *absolute* units
  from the start of the run, exactly like torch, not from the end of warm-up;
  warm-up simply overrides the value while ``t < W``.

``cosine`` and ``linear`` never go below ``m`` (clamped against rounding).

``inverse_sqrt`` (fairseq ``InverseSquareRootSchedule``, arithmetic reproduced
exactly): ``t = u`` is the number of updates already done (fairseq's
``num_updates``; the first update runs at ``u = 0``, because fairseq sets
``lr = warmup_init_lr`` at construction and calls ``step_update(num_updates)``
after each update)::

    lr_step      = (b - w0) / W
    decay_factor = b * W ** 0.5
    lr = w0 + u * lr_step            if u < W
    lr = decay_factor * u ** -0.5    otherwise

So ``lr(0) = w0`` (0 in the GaP recipe: the first update is a no-op step),
``lr(W - 1) = b - lr_step`` and ``lr(W) = b``. ``W >= 1`` is required (fairseq
divides by it) and may be ``>= total``; ``total`` is only validated and used by
:func:`describe` -- ``lr_at`` accepts any ``u >= 0``. ``min_lr`` must be 0: in
fairseq ``--min-lr`` is a stop criterion of the training loop, not an LR floor.
Note that NVIDIA's fairseq fork defaults ``--warmup-init-lr`` to ``lr``; GaP passes
0 explicitly, which is this class's default.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from ..errors import UserError
from ..options import is_real_number

__all__ = ["KINDS", "LRSchedule", "describe", "set_lr"]

KINDS: tuple[str, ...] = ("constant", "cosine", "linear", "step", "inverse_sqrt")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class LRSchedule:
    """A stateless LR schedule; see the module docstring for the exact formulas.

    Fields (all lengths in the caller's unit, epochs or updates):

    * ``kind``: ``"constant" | "cosine" | "linear" | "step" | "inverse_sqrt"``.
    * ``base_lr``: peak LR reached at the end of warm-up, finite and ``> 0``.
    * ``total``: schedule length ``T >= 1``; valid positions are ``0 <= t < T``
      (``inverse_sqrt``: any ``t >= 0``).
    * ``warmup``: warm-up length ``W``; ``0 <= W < T`` for all kinds except
      ``inverse_sqrt``, which needs ``W >= 1`` and has no upper bound.
    * ``warmup_init_lr``: start of the warm-up ramp, ``0 <= w0 <= base_lr``; must be 0
      when ``warmup == 0`` (it would have no effect).
    * ``min_lr``: floor of ``cosine``/``linear``/``step``, ``0 <= m <= base_lr``;
      must be 0 for ``inverse_sqrt``; unused by ``constant``.
    * ``step_size`` / ``milestones``: ``step`` only, exactly one of them;
      ``step_size >= 1``; milestones strictly increasing integers in ``[1, T)``
      (a list is accepted and stored as a tuple).
    * ``gamma``: ``step`` only, multiplicative factor per decay, ``0 < gamma <= 1``
      (ignored by other kinds).

    Every invalid field raises ``ValueError`` naming ``lr.<field>``, the value and
    the valid range.
    """

    kind: str
    base_lr: float
    total: int
    warmup: int = 0
    warmup_init_lr: float = 0.0
    min_lr: float = 0.0
    step_size: int | None = None
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"lr.kind={self.kind!r} must be one of {', '.join(KINDS)}")
        if not is_real_number(self.base_lr) or self.base_lr <= 0:
            raise UserError(f"lr.base_lr={self.base_lr!r} must be a finite number > 0")
        if not _is_int(self.total) or self.total < 1:
            raise UserError(f"lr.total={self.total!r} must be an integer >= 1")
        if not _is_int(self.warmup) or self.warmup < 0:
            raise UserError(f"lr.warmup={self.warmup!r} must be an integer >= 0")
        if self.kind == "inverse_sqrt":
            if self.warmup < 1:
                raise UserError(f"lr.warmup={self.warmup} must be >= 1 for lr.kind='inverse_sqrt'")
        elif self.warmup >= self.total:
            raise UserError(f"lr.warmup={self.warmup} must be < lr.total={self.total}")
        if not is_real_number(self.warmup_init_lr) or not 0 <= self.warmup_init_lr <= self.base_lr:
            raise UserError(
                f"lr.warmup_init_lr={self.warmup_init_lr!r} must be in [0, lr.base_lr={self.base_lr}]"
            )
        if self.warmup == 0 and self.warmup_init_lr != 0:
            raise UserError(
                f"lr.warmup_init_lr={self.warmup_init_lr} must be 0 when lr.warmup=0 (no warm-up)"
            )
        if not is_real_number(self.min_lr) or not 0 <= self.min_lr <= self.base_lr:
            raise UserError(f"lr.min_lr={self.min_lr!r} must be in [0, lr.base_lr={self.base_lr}]")
        if self.kind == "inverse_sqrt" and self.min_lr != 0:
            raise UserError(
                f"lr.min_lr={self.min_lr} must be 0 for lr.kind='inverse_sqrt' "
                "(fairseq's --min-lr stops training, it is not an LR floor)"
            )

        milestones = self.milestones
        if isinstance(milestones, (list, tuple)):
            milestones = tuple(milestones)
            object.__setattr__(self, "milestones", milestones)
        else:
            raise UserError(f"lr.milestones={milestones!r} must be a list of integers")

        if self.kind == "step":
            if (self.step_size is None) == (len(milestones) == 0):
                raise UserError(
                    f"lr.step_size={self.step_size!r} and lr.milestones={list(milestones)}: "
                    "exactly one must be set for lr.kind='step'"
                )
            if self.step_size is not None and (not _is_int(self.step_size) or self.step_size < 1):
                raise UserError(f"lr.step_size={self.step_size!r} must be an integer >= 1")
            if milestones:
                if not all(_is_int(m) for m in milestones):
                    raise UserError(f"lr.milestones={list(milestones)} must be integers")
                if any(b <= a for a, b in zip(milestones, milestones[1:])):
                    raise UserError(f"lr.milestones={list(milestones)} must be strictly increasing")
                if milestones[0] < 1 or milestones[-1] >= self.total:
                    raise UserError(
                        f"lr.milestones={list(milestones)} must lie in [1, lr.total={self.total})"
                    )
            if not is_real_number(self.gamma) or not 0 < self.gamma <= 1:
                raise UserError(f"lr.gamma={self.gamma!r} must be in (0, 1]")
        else:
            if self.step_size is not None:
                raise UserError(
                    f"lr.step_size={self.step_size!r} is only valid for lr.kind='step' (got {self.kind!r})"
                )
            if milestones:
                raise UserError(
                    f"lr.milestones={list(milestones)} are only valid for lr.kind='step' (got {self.kind!r})"
                )

    # ------------------------------------------------------------------ values

    def lr_at(self, t: float) -> float:
        """LR to use at position ``t`` (0-based epoch index, or updates already done).

        Valid range: ``0 <= t < total`` (``inverse_sqrt``: ``t >= 0``); otherwise
        ``ValueError``.
        """
        if not is_real_number(t):
            raise UserError(f"t={t!r} must be a finite number")
        if self.kind == "inverse_sqrt":
            if t < 0:
                raise UserError(f"t={t} must be >= 0 for lr.kind='inverse_sqrt'")
            return self._inverse_sqrt(t)
        if not 0 <= t < self.total:
            raise UserError(f"t={t} must be in [0, lr.total={self.total})")

        b, m, W, T = self.base_lr, self.min_lr, self.warmup, self.total
        if t < W:
            if t + 1 >= W:  # last warm-up unit (and fractional t in (W-1, W)): the peak
                return b
            w0 = self.warmup_init_lr
            if w0 == 0:
                return b * (t + 1) / W  # GPMT: lr0*(e+1)/W, same operation order
            return w0 + (b - w0) * (t + 1) / W

        if self.kind == "constant":
            return b
        if self.kind == "cosine":
            return max(m, m + (b - m) * 0.5 * (1 + math.cos(math.pi * (t - W) / (T - W))))
        if self.kind == "linear":
            return max(m, b - (t - W) / (T - W) * (b - m))
        # step: decays counted in absolute units of t, as torch StepLR/MultiStepLR
        if self.step_size is not None:
            k = int(math.floor(t)) // self.step_size
        else:
            k = bisect_right(self.milestones, t)
        return max(m, b * self.gamma**k)

    def _inverse_sqrt(self, u: float) -> float:
        W = self.warmup
        w0 = self.warmup_init_lr
        lr_step = (self.base_lr - w0) / W
        decay_factor = self.base_lr * W**0.5
        if u < W:
            return w0 + u * lr_step
        return decay_factor * u**-0.5

    def lrs(self, n: int | None = None) -> list[float]:
        """``[lr_at(0), ..., lr_at(n - 1)]``; ``n`` defaults to ``total``."""
        n = self.total if n is None else n
        return [self.lr_at(i) for i in range(n)]


# ---------------------------------------------------------------------- helpers


def set_lr(optimizer: Any, lr: float) -> None:
    """Set ``group['lr'] = lr * group.get('lr_scale', 1.0)`` for every param group.

    ``optimizer`` is anything with a ``param_groups`` list of dicts (a
    ``torch.optim.Optimizer``). ``lr`` must be finite and ``>= 0``.
    """
    if not is_real_number(lr) or lr < 0:
        raise UserError(f"lr={lr!r} must be a finite number >= 0")
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr


def describe(
    schedule: LRSchedule, points: Iterable[float] | None = None
) -> list[tuple[float, float]]:
    """``(t, lr_at(t))`` at a few positions, for printing a plan.

    Default positions (deduplicated, sorted, restricted to ``[0, total)``): the
    start ``0``; the last warm-up unit ``W - 1`` and the first unit after it ``W``
    (when ``W >= 1``); the middle of the post-warm-up phase ``(W + T - 1) // 2``;
    the last unit ``T - 1``. Integer positions are returned as ``int``.
    ``points`` overrides them (given order kept; each must be valid for ``lr_at``).
    """
    if points is None:
        W, T = schedule.warmup, schedule.total
        cand: set[int] = {0, T - 1, (min(W, T - 1) + T - 1) // 2}
        if W >= 1:
            cand |= {W - 1, W}
        chosen: Sequence[float] = sorted(p for p in cand if 0 <= p < T)
    else:
        chosen = list(points)
    return [(t, schedule.lr_at(t)) for t in chosen]
