"""SSD box coding, matching, loss and post-processing against hand cases and brute-force loop references
(float64 throughout, so that only ties the tests build on purpose can decide an order)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsetrain.errors import UserError
from sparsetrain.tasks.detection_boxes import (
    BoxCoder,
    hard_negative_mask,
    multibox_loss,
    postprocess,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def ref_iou(p, q) -> float:
    w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = w * h
    union = max(0.0, p[2] - p[0]) * max(0.0, p[3] - p[1]) + max(0.0, q[2] - q[0]) * max(0.0, q[3] - q[1]) - inter
    return inter / union if union > 0 else 0.0


def to_xywh(b):
    return [0.5 * (b[0] + b[2]), 0.5 * (b[1] + b[3]), b[2] - b[0], b[3] - b[1]]


def to_ltrb(b):
    return [b[0] - 0.5 * b[2], b[1] - 0.5 * b[3], b[0] + 0.5 * b[2], b[1] + 0.5 * b[3]]


def coder_from_ltrb(boxes) -> BoxCoder:
    return BoxCoder(torch.tensor([to_xywh(b) for b in boxes], dtype=F64))


def ref_encode(defaults_xywh, gt, labels, threshold):
    """NVIDIA's matching, one default box and one ground truth at a time."""
    defaults = [to_ltrb(d) for d in defaults_xywh]
    ious = [[ref_iou(g, d) for d in defaults] for g in gt]
    best_iou, match = [], []
    for d in range(len(defaults)):
        j_best = 0
        for j in range(1, len(gt)):
            if ious[j][d] > ious[j_best][d]:  # strict: the first maximum wins
                j_best = j
        best_iou.append(ious[j_best][d] if gt else 0.0)
        match.append(j_best)
    for j in range(len(gt)):  # later ground truth overwrites an earlier claim
        d_best = max(range(len(defaults)), key=lambda d: (ious[j][d], -d))
        best_iou[d_best] = 2.0
        match[d_best] = j
    out_loc, out_lab = [], []
    for d in range(len(defaults)):
        if best_iou[d] > threshold:
            out_loc.append(to_xywh(gt[match[d]]))
            out_lab.append(labels[match[d]])
        else:
            out_loc.append(list(defaults_xywh[d]))
            out_lab.append(0)
    return out_loc, out_lab


# Default boxes d0..d4 (ltrb) of the hand cases: the four quadrants and a box inside d0.
QUADRANTS = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0],
             [0.0, 0.0, 0.4, 0.4]]


def test_matching_hand_case():
    coder = coder_from_ltrb(QUADRANTS)
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.8, 0.8]], dtype=F64)
    # gt0: IoU 1 with d0, 0.64 with d4. gt1: best is d3 with IoU 0.09 / 0.25 = 0.36 < 0.5, forced positive.
    loc, labels = coder.encode(gt, torch.tensor([3, 7]), 0.5)
    assert labels.tolist() == [3, 0, 0, 7, 3]
    expected = [to_xywh(gt[0].tolist()), to_xywh(QUADRANTS[1]), to_xywh(QUADRANTS[2]), to_xywh(gt[1].tolist()),
                to_xywh(gt[0].tolist())]
    assert torch.allclose(loc, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-15)
    _, labels = coder.encode(gt, torch.tensor([3, 7]), 0.7)  # d4's 0.64 is no longer enough
    assert labels.tolist() == [3, 0, 0, 7, 0]


def test_matching_collision_later_ground_truth_wins():
    coder = coder_from_ltrb(QUADRANTS)
    # Both claim d0 (gt1 lies inside d0 only); gt1, the later one, takes it although gt0 has IoU 1 there.
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.42, 0.42, 0.48, 0.48]], dtype=F64)
    loc, labels = coder.encode(gt, torch.tensor([3, 5]))
    assert labels.tolist() == [5, 0, 0, 0, 3]
    assert torch.allclose(loc[0], torch.tensor(to_xywh(gt[1].tolist()), dtype=F64), rtol=0, atol=1e-15)


def test_zero_ground_truth_image():
    coder = coder_from_ltrb(QUADRANTS)
    loc, labels = coder.encode(torch.zeros(0, 4, dtype=F64), torch.zeros(0, dtype=torch.long))
    assert labels.tolist() == [0] * 5 and labels.dtype == torch.long
    assert torch.equal(loc, coder.default_xywh)
    locs, labels = coder.encode_batch([(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))])
    assert locs.shape == (1, 4, 5) and labels.shape == (1, 5)
    assert torch.equal(coder.offsets(locs), torch.zeros(1, 4, 5, dtype=F64))  # negatives: exactly 0


@st.composite
def matching_problems(draw):
    def box(lo=1):
        x, y = draw(st.integers(0, 6)), draw(st.integers(0, 6))
        return [x / 8, y / 8, (x + draw(st.integers(lo, 4))) / 8, (y + draw(st.integers(lo, 4))) / 8]

    defaults = [to_xywh(box()) for _ in range(draw(st.integers(1, 12)))]
    n = draw(st.integers(0, 5))
    gt = [box() for _ in range(n)]
    labels = [draw(st.integers(1, 9)) for _ in range(n)]
    return defaults, gt, labels, draw(st.sampled_from([0.5, 0.25, 0.0, 1.0]))


@given(matching_problems())
def test_encode_matches_loop_reference(problem):
    defaults, gt, labels, threshold = problem
    coder = BoxCoder(torch.tensor(defaults, dtype=F64))
    loc, lab = coder.encode(torch.tensor(gt, dtype=F64).reshape(-1, 4), torch.tensor(labels, dtype=torch.long),
                            threshold)
    ref_loc, ref_lab = ref_encode(defaults, gt, labels, threshold)
    assert lab.tolist() == ref_lab
    assert loc.tolist() == ref_loc


def test_offsets_hand_values_and_identity():
    coder = BoxCoder(torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.3, 0.1, 0.1]], dtype=F64))
    loc = torch.tensor([[[0.52, 0.3], [0.46, 0.3], [0.4, 0.1], [0.1, 0.1]]], dtype=F64)  # (1, 4, 2)
    expected = [[1.0, 0.0], [-1.0, 0.0], [math.log(2) / 0.2, 0.0], [math.log(0.25) / 0.2, 0.0]]
    assert torch.allclose(coder.offsets(loc)[0], torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)

    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(30, 2, generator=gen, dtype=F64) * 0.8
    coder = BoxCoder(torch.cat((xy + 0.05, 0.05 + 0.3 * torch.rand(30, 2, generator=gen, dtype=F64)), 1))
    targets = []
    for n in (3, 0, 6):
        corner = torch.rand(n, 2, generator=gen, dtype=F64) * 0.6
        boxes = torch.cat((corner, corner + 0.05 + 0.3 * torch.rand(n, 2, generator=gen, dtype=F64)), 1)
        targets.append((boxes, torch.randint(1, 5, (n,), generator=gen)))
    locs, labels = coder.encode_batch(targets, 0.5)
    assert locs.shape == (3, 4, 30) and labels.shape == (3, 30)
    decoded = coder.decode(coder.offsets(locs))  # (3, 30, 4) ltrb
    for b, (boxes, _) in enumerate(targets):
        ref_loc, ref_lab = ref_encode(coder.default_xywh.tolist(), boxes.tolist(), [1] * len(boxes), 0.5)
        expected = torch.tensor([to_ltrb(x) for x in ref_loc], dtype=F64)
        assert torch.allclose(decoded[b], expected, rtol=0, atol=1e-12)
        assert ((labels[b] > 0).tolist()) == [lab > 0 for lab in ref_lab]
    assert (labels[0] > 0).sum() >= 3  # every ground truth got a default box


@st.composite
def mining_problems(draw):
    b, d = draw(st.integers(1, 3)), draw(st.integers(1, 16))
    ce = [[float(draw(st.integers(0, 5))) for _ in range(d)] for _ in range(b)]  # ties and zeros
    positive = [[draw(st.booleans()) for _ in range(d)] for _ in range(b)]
    return ce, positive, draw(st.sampled_from([3, 1, 2, 0.5, 1.5]))


@given(mining_problems())
def test_hard_negative_mask_matches_reference(problem):
    ce, positive, ratio = problem
    mask = hard_negative_mask(torch.tensor(ce, dtype=F64), torch.tensor(positive), ratio)
    for row_ce, row_pos, row_mask in zip(ce, positive, mask.tolist()):
        d = len(row_ce)
        ranked = [0.0 if p else c for c, p in zip(row_ce, row_pos)]
        order = sorted(range(d), key=lambda i: (-ranked[i], i))  # the double sort, ties by index
        quota = min(ratio * sum(row_pos), d)
        chosen = {order[r] for r in range(d) if r < quota} - {i for i in range(d) if row_pos[i]}
        assert row_mask == [i in chosen for i in range(d)]


def test_hard_negative_mask_picks_the_highest_losses():
    gen = torch.Generator().manual_seed(3)
    ce = torch.rand(4, 50, generator=gen, dtype=F64) + 0.01  # all > 0
    positive = torch.rand(4, 50, generator=gen) < torch.tensor([[0.0], [0.05], [0.2], [0.5]])
    mask = hard_negative_mask(ce, positive)
    for b in range(4):
        pos = int(positive[b].sum())
        assert int(mask[b].sum()) == min(3 * pos, 50 - pos)
        assert not (mask[b] & positive[b]).any()
        unchosen = ~mask[b] & ~positive[b]
        if mask[b].any() and unchosen.any():
            assert ce[b][mask[b]].min() > ce[b][unchosen].max()


def ref_loss(ploc, plogit, gloc, glabel, ratio=3):
    total = 0.0
    for b in range(len(glabel)):
        d_count = len(glabel[b])
        pos = [d for d in range(d_count) if glabel[b][d] > 0]
        ce = []
        for d in range(d_count):
            logits = [plogit[b][c][d] for c in range(len(plogit[b]))]
            top = max(logits)
            ce.append(top + math.log(sum(math.exp(v - top) for v in logits)) - logits[glabel[b][d]])
        loc = 0.0
        for d in pos:
            for k in range(4):
                x = abs(ploc[b][k][d] - gloc[b][k][d])
                loc += 0.5 * x * x if x < 1 else x - 0.5
        negatives = sorted((d for d in range(d_count) if glabel[b][d] == 0), key=lambda d: (-ce[d], d))
        chosen = negatives[:math.ceil(ratio * len(pos))]
        if pos:
            total += (loc + sum(ce[d] for d in pos) + sum(ce[d] for d in chosen)) / len(pos)
    return total / len(glabel)


@pytest.mark.parametrize("ratio", [3, 1.5])
def test_multibox_loss_matches_loop_reference(ratio):
    gen = torch.Generator().manual_seed(7)
    b, c, d = 4, 5, 25
    ploc = (torch.randn(b, 4, d, generator=gen, dtype=F64) * 1.5).requires_grad_()
    plogit = torch.randn(b, c, d, generator=gen, dtype=F64).requires_grad_()
    gloc = torch.randn(b, 4, d, generator=gen, dtype=F64)
    glabel = torch.randint(1, c, (b, d), generator=gen) * (torch.rand(b, d, generator=gen) < torch.tensor(
        [[0.1], [0.0], [0.3], [0.9]])).long()  # image 1 has no positive: it contributes 0
    loss = multibox_loss(ploc, plogit, gloc, glabel, negative_ratio=ratio)
    expected = ref_loss(ploc.tolist(), plogit.tolist(), gloc.tolist(), glabel.tolist(), ratio)
    assert loss.shape == () and math.isclose(loss.item(), expected, rel_tol=1e-12)
    loss.backward()
    assert ploc.grad[1].abs().sum() == 0 and plogit.grad[1].abs().sum() == 0
    assert multibox_loss(ploc, plogit, gloc, torch.zeros(b, d, dtype=torch.long)).item() == 0.0


def ref_postprocess(boxes, probs, score_threshold, candidates, nms_iou, max_detections):
    """Per class: threshold, top candidates, greedy NMS; then the best max_detections overall."""
    found = []
    for c in range(1, len(probs)):
        cands = sorted((d for d in range(len(boxes)) if probs[c][d] > score_threshold),
                       key=lambda d: (-probs[c][d], d))[:candidates]
        kept: list[int] = []
        for d in cands:
            if all(ref_iou(boxes[k], boxes[d]) <= nms_iou for k in kept):
                kept.append(d)
        found += [(probs[c][d], c, d) for d in kept]
    found.sort(key=lambda t: (-t[0], t[1], t[2]))
    return found[:max_detections]


@pytest.mark.parametrize("limits", [(0.05, 200, 0.5, 200), (0.15, 4, 0.3, 9), (0.0, 1, 1.0, 3)])
def test_postprocess_matches_loop_reference(limits):
    gen = torch.Generator().manual_seed(11)
    b, c, d = 3, 4, 40
    xy = 0.3 + 0.4 * torch.rand(d, 2, generator=gen, dtype=F64)  # clustered: decoded boxes overlap
    coder = BoxCoder(torch.cat((xy, 0.1 + 0.3 * torch.rand(d, 2, generator=gen, dtype=F64)), 1))
    offsets = torch.randn(b, 4, d, generator=gen, dtype=F64)
    logits = 2 * torch.randn(b, c, d, generator=gen, dtype=F64)
    coder.default_xywh[5] = coder.default_xywh[4]  # an exact duplicate: same box, same scores
    offsets[:, :, 5], logits[:, :, 5] = offsets[:, :, 4], logits[:, :, 4]
    results = postprocess(coder, offsets, logits, *limits)
    boxes = coder.decode(offsets)
    probs = torch.softmax(logits, dim=1)
    assert len(results) == b
    for i, (out_boxes, out_labels, out_scores) in enumerate(results):
        expected = ref_postprocess(boxes[i].tolist(), probs[i].tolist(), *limits)
        assert out_labels.dtype == torch.long
        assert out_labels.tolist() == [label for _, label, _ in expected]
        assert out_scores.tolist() == [score for score, _, _ in expected]
        assert out_boxes.tolist() == [boxes[i][d].tolist() for _, _, d in expected]


def test_postprocess_nothing_above_threshold():
    coder = coder_from_ltrb(QUADRANTS)
    results = postprocess(coder, torch.zeros(2, 4, 5), torch.zeros(2, 3, 5), score_threshold=0.5)
    for boxes, labels, scores in results:  # every probability is 1/3
        assert boxes.shape == (0, 4) and labels.shape == (0,) and scores.shape == (0,)


def test_bad_input_names_the_value():
    coder = coder_from_ltrb(QUADRANTS)
    with pytest.raises(UserError, match="label 0"):
        coder.encode(torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.tensor([0]))
    with pytest.raises(UserError, match="box 1 .* no area"):
        coder.encode(torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.2, 0.6]]), torch.tensor([1, 2]))
    with pytest.raises(UserError, match="iou_threshold=1.5"):
        coder.encode(torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.tensor([1]), 1.5)
    with pytest.raises(UserError, match="offsets"):
        coder.decode(torch.zeros(1, 4, 6))
    with pytest.raises(UserError, match="widths and heights"):
        BoxCoder(torch.tensor([[0.5, 0.5, 0.0, 0.1]]))
    with pytest.raises(UserError, match="ratio=0"):
        hard_negative_mask(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool), 0)
    with pytest.raises(UserError, match="max_detections=0"):
        postprocess(coder, torch.zeros(1, 4, 5), torch.zeros(1, 3, 5), max_detections=0)
