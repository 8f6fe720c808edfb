import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsetrain.runner.lr_schedules import KINDS, LRSchedule, describe, set_lr

# ----------------------------------------------------------------- exact values


def test_gpmt_cosine_last_epoch():
    s = LRSchedule("cosine", base_lr=0.1024, total=120)
    last = s.lr_at(119)
    assert last == pytest.approx(0.1024 * math.sin(math.pi / 240) ** 2, rel=1e-12)
    assert last == pytest.approx(1.7546e-5, rel=1e-4)  # the reference's "about 1.8e-5"
    assert s.lr_at(0) == 0.1024
    assert s.lr_at(60) == pytest.approx(0.0512, rel=1e-12)


def test_gpmt_cosine_with_warmup_matches_reference_formula():
    lr0, W, E = 0.1024, 5, 120
    s = LRSchedule("cosine", base_lr=lr0, total=E, warmup=W)
    for e in range(E):
        if e < W:
            want = lr0 * (e + 1) / W
        else:
            want = 0.5 * (1 + math.cos(math.pi * (e - W) / (E - W))) * lr0
        assert s.lr_at(e) == pytest.approx(want, rel=1e-14, abs=0)


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear"])
def test_warmup_reproduces_gpmt_ramp(kind):
    lr0, W = 1.2, 10
    s = LRSchedule(kind, base_lr=lr0, total=100, warmup=W)
    for e in range(W - 1):
        assert s.lr_at(e) == lr0 * (e + 1) / W  # bit-exact, same operation order
    assert s.lr_at(W - 1) == lr0
    assert s.lr_at(W) == lr0  # first post-warm-up unit is the peak for all three kinds


def test_warmup_from_init_lr():
    s = LRSchedule("constant", base_lr=1.0, total=10, warmup=4, warmup_init_lr=0.2)
    assert [s.lr_at(e) for e in range(5)] == pytest.approx([0.4, 0.6, 0.8, 1.0, 1.0])
    assert s.lr_at(2.5) == pytest.approx(0.2 + 0.8 * 3.5 / 4)
    assert s.lr_at(3.5) == 1.0  # fractional t in (W-1, W): ramp capped at the peak


def test_linear_gpmt_readme():
    lr0, E = 0.1024, 120
    s = LRSchedule("linear", base_lr=lr0, total=E)
    for e in range(E):
        assert s.lr_at(e) == pytest.approx(lr0 - (e / E) * lr0, rel=1e-14)
    s = LRSchedule("linear", base_lr=1.0, total=12, warmup=2, min_lr=0.1)
    assert s.lr_at(2) == 1.0
    assert s.lr_at(7) == pytest.approx(1.0 - 5 / 10 * 0.9)
    assert s.lr_at(11) == pytest.approx(0.1 + 0.9 / 10)


def test_constant():
    s = LRSchedule("constant", base_lr=0.3, total=5)
    assert s.lrs() == [0.3] * 5


def test_cosine_min_lr():
    s = LRSchedule("cosine", base_lr=1.0, total=10, min_lr=0.2)
    assert s.lr_at(0) == 1.0
    assert s.lr_at(5) == pytest.approx(0.6)
    assert 0.2 < s.lr_at(9) < 0.25


def test_fairseq_inverse_sqrt_gap_recipe():
    b, W = 0.000846, 4000
    s = LRSchedule("inverse_sqrt", base_lr=b, total=100_000, warmup=W)
    lr_step = (b - 0.0) / W
    decay = b * W**0.5
    assert s.lr_at(0) == 0.0
    assert s.lr_at(1) == lr_step
    assert s.lr_at(W - 1) == 0.0 + (W - 1) * lr_step
    assert s.lr_at(W - 1) == pytest.approx(b * (W - 1) / W, rel=1e-12)
    assert s.lr_at(W) == decay * W**-0.5
    assert s.lr_at(W) == pytest.approx(b, rel=1e-12)
    assert s.lr_at(4 * W) == decay * (4 * W) ** -0.5
    assert s.lr_at(4 * W) == pytest.approx(b / 2, rel=1e-12)
    assert s.lr_at(10**7) > 0  # no upper bound on u: total only validated


def test_fairseq_inverse_sqrt_with_init_lr():
    s = LRSchedule("inverse_sqrt", base_lr=1e-3, total=10, warmup=4, warmup_init_lr=1e-7)
    step = (1e-3 - 1e-7) / 4
    assert s.lr_at(0) == 1e-7
    assert s.lr_at(3) == 1e-7 + 3 * step
    assert s.lr_at(16) == pytest.approx(5e-4, rel=1e-12)


def test_inverse_sqrt_warmup_may_exceed_total():
    s = LRSchedule("inverse_sqrt", base_lr=1e-3, total=10, warmup=4000)
    assert s.lr_at(9) == 9 * (1e-3 / 4000)


# ------------------------------------------------------------ torch equality


def _torch_lrs(make_sched, base, n):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = make_sched(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_size_matches_torch_steplr():
    base, n = 0.1, 50
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.3), base, n)
    s = LRSchedule("step", base_lr=base, total=n, step_size=7, gamma=0.3)
    assert s.lrs() == pytest.approx(ref, rel=1e-12)


def test_milestones_match_torch_multisteplr():
    base, n, ms = 0.1, 40, [5, 17, 30]
    ref = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=ms, gamma=0.1), base, n
    )
    s = LRSchedule("step", base_lr=base, total=n, milestones=ms)  # list accepted
    assert s.milestones == (5, 17, 30)
    assert s.lrs() == pytest.approx(ref, rel=1e-12)


def test_step_warmup_overrides_absolute_milestones():
    s = LRSchedule("step", base_lr=1.0, total=20, warmup=4, milestones=(2, 10))
    assert s.lrs()[:6] == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.1, 0.1])
    assert s.lr_at(10) == pytest.approx(0.01)


def test_step_min_lr_floor():
    s = LRSchedule("step", base_lr=1.0, total=10, step_size=1, gamma=0.1, min_lr=1e-3)
    assert s.lr_at(9) == 1e-3


def test_cosine_matches_torch_closed_form():
    base, eta_min, T = 0.5, 0.01, 30
    s = LRSchedule("cosine", base_lr=base, total=T, min_lr=eta_min)
    for t in range(T):
        want = eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / T)) / 2
        assert s.lr_at(t) == pytest.approx(want, rel=1e-14)
    # and the recursive torch scheduler agrees too
    ref = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T, eta_min=eta_min), base, T
    )
    assert s.lrs() == pytest.approx(ref, rel=1e-9)


# ------------------------------------------------------------------- properties


@st.composite
def schedules(draw, kind=None):
    kind = kind or draw(st.sampled_from(KINDS))
    base = draw(st.floats(1e-6, 10.0))
    total = draw(st.integers(1, 300))
    if kind == "inverse_sqrt":
        warmup = draw(st.integers(1, 400))
        min_lr = 0.0
    else:
        warmup = draw(st.integers(0, total - 1))
        min_lr = draw(st.sampled_from([0.0, 0.5])) * base * draw(st.floats(0, 1))
    w0 = 0.0 if warmup == 0 else draw(st.sampled_from([0.0, 0.3])) * base
    kw = {}
    if kind == "step":
        gamma = draw(st.floats(0.01, 1.0))
        if total > 1 and draw(st.booleans()):
            ms = draw(st.lists(st.integers(1, total - 1), min_size=1, max_size=5, unique=True))
            kw = dict(milestones=tuple(sorted(ms)), gamma=gamma)
        else:
            kw = dict(step_size=draw(st.integers(1, 50)), gamma=gamma)
    return LRSchedule(kind, base, total, warmup, w0, min_lr, **kw)


def _positions(s, n=60):
    top = s.total if s.kind != "inverse_sqrt" else max(s.total, 5 * s.warmup)
    ints = list(range(0, top, max(1, top // n)))
    return sorted(set(ints + [top - 1, s.warmup, max(0, s.warmup - 1)]) & set(range(top)))


TOL = 1e-12


@given(schedules(), st.data())
def test_lr_within_bounds(s, data):
    frac = data.draw(st.floats(0, 1, exclude_max=True))
    for t in _positions(s):
        for tt in (t, min(t + frac, s.total - 1) if s.kind != "inverse_sqrt" else t + frac):
            lr = s.lr_at(tt)
            assert lr <= s.base_lr * (1 + TOL)
            if s.kind == "inverse_sqrt":
                assert lr >= 0
            elif tt < s.warmup:
                assert lr >= s.warmup_init_lr and lr > 0
            else:
                assert lr >= s.min_lr


@given(schedules())
def test_monotone(s):
    pos = _positions(s)
    lrs = [s.lr_at(t) for t in pos]
    for (t1, a), (t2, b) in zip(zip(pos, lrs), zip(pos[1:], lrs[1:])):
        if t2 < s.warmup:
            assert b >= a  # warm-up ramps up
        elif t1 >= s.warmup:
            assert b <= a * (1 + TOL)  # non-increasing after warm-up
    if s.kind == "constant":
        assert all(x == s.base_lr for t, x in zip(pos, lrs) if t >= s.warmup)


@given(schedules())
def test_pure_and_describe(s):
    plan = describe(s)
    ts = [t for t, _ in plan]
    assert ts == sorted(set(ts)) and ts[0] == 0 and ts[-1] == s.total - 1
    assert all(isinstance(t, int) for t in ts)
    assert plan == describe(s)  # no hidden state
    assert all(lr == s.lr_at(t) for t, lr in plan)


def test_describe_points():
    s = LRSchedule("cosine", base_lr=1.0, total=100, warmup=10)
    assert [t for t, _ in describe(s)] == [0, 9, 10, 54, 99]
    assert describe(s, [3, 0.5]) == [(3, s.lr_at(3)), (0.5, s.lr_at(0.5))]


# --------------------------------------------------------------------- set_lr


def test_set_lr_respects_lr_scale():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr_scale": 0.5}], lr=1.0)
    set_lr(opt, 0.2)
    assert opt.param_groups[0]["lr"] == 0.2
    assert opt.param_groups[1]["lr"] == 0.1
    with pytest.raises(ValueError, match="lr="):
        set_lr(opt, float("nan"))


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(kind="cosin", base_lr=1, total=10), "lr.kind"),
        (dict(kind="cosine", base_lr=0, total=10), "lr.base_lr"),
        (dict(kind="cosine", base_lr=float("inf"), total=10), "lr.base_lr"),
        (dict(kind="cosine", base_lr=1, total=0), "lr.total"),
        (dict(kind="cosine", base_lr=1, total=2.0), "lr.total"),
        (dict(kind="cosine", base_lr=1, total=10, warmup=10), "lr.warmup=10 must be < lr.total=10"),
        (dict(kind="cosine", base_lr=1, total=10, warmup=-1), "lr.warmup"),
        (dict(kind="inverse_sqrt", base_lr=1, total=10, warmup=0), "lr.warmup"),
        (dict(kind="cosine", base_lr=1, total=10, warmup=2, warmup_init_lr=2), "lr.warmup_init_lr"),
        (dict(kind="cosine", base_lr=1, total=10, warmup_init_lr=0.1), "lr.warmup_init_lr"),
        (dict(kind="cosine", base_lr=1, total=10, min_lr=-0.1), "lr.min_lr"),
        (dict(kind="linear", base_lr=1, total=10, min_lr=1.5), "lr.min_lr"),
        (dict(kind="inverse_sqrt", base_lr=1, total=10, warmup=2, min_lr=0.1), "lr.min_lr"),
        (dict(kind="step", base_lr=1, total=10), "lr.step_size"),
        (dict(kind="step", base_lr=1, total=10, step_size=2, milestones=(3,)), "lr.milestones"),
        (dict(kind="step", base_lr=1, total=10, step_size=0), "lr.step_size"),
        (dict(kind="step", base_lr=1, total=10, milestones=(5, 3)), "lr.milestones"),
        (dict(kind="step", base_lr=1, total=10, milestones=(3, 3)), "lr.milestones"),
        (dict(kind="step", base_lr=1, total=10, milestones=(0, 3)), "lr.milestones"),
        (dict(kind="step", base_lr=1, total=10, milestones=(3, 10)), "lr.milestones"),
        (dict(kind="step", base_lr=1, total=10, milestones=(2.5,)), "lr.milestones"),
        (dict(kind="step", base_lr=1, total=10, step_size=2, gamma=0), "lr.gamma"),
        (dict(kind="step", base_lr=1, total=10, step_size=2, gamma=1.5), "lr.gamma"),
        (dict(kind="cosine", base_lr=1, total=10, step_size=2), "lr.step_size"),
        (dict(kind="cosine", base_lr=1, total=10, milestones=(2,)), "lr.milestones"),
    ],
)
def test_bad_fields_raise(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.").replace("(", r"\(")) as exc:
        LRSchedule(**kwargs)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear"])
def test_lr_at_out_of_range(kind):
    s = LRSchedule(kind, base_lr=1.0, total=10)
    for t in (-1, 10, 10.5, float("nan")):
        with pytest.raises(ValueError, match="t="):
            s.lr_at(t)
    with pytest.raises(ValueError, match=r"\[0, lr\.total=10\)"):
        s.lr_at(10)
    inv = LRSchedule("inverse_sqrt", base_lr=1.0, total=10, warmup=2)
    with pytest.raises(ValueError, match="t=-1"):
        inv.lr_at(-1)


def test_frozen():
    s = LRSchedule("constant", base_lr=1.0, total=3)
    with pytest.raises(Exception):
        s.base_lr = 2.0  # type: ignore[misc]
