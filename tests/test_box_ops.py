"""Box ops against brute-force Python references: IoU by hand, NMS by the textbook greedy loop.

Boxes are float64 with coordinates on a small integer grid and scores from a few values, so that exact
ties (equal scores, IoU exactly at the threshold) occur and the documented tie rules are exercised; the
reference evaluates IoU with the same formula in Python floats, which is bit-identical in float64.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsetrain.errors import UserError
from sparsetrain.ops import batched_nms, box_iou, ltrb_to_xywh, nms, xywh_to_ltrb
from sparsetrain.ops import boxes as boxes_module

pytestmark = pytest.mark.usefixtures("one_thread")


def ref_iou(p, q) -> float:
    w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = w * h
    area_p = max(0.0, p[2] - p[0]) * max(0.0, p[3] - p[1])
    area_q = max(0.0, q[2] - q[0]) * max(0.0, q[3] - q[1])
    union = area_p + area_q - inter
    return inter / union if union > 0 else 0.0


def ref_batched_nms(boxes, scores, cats, threshold) -> list[int]:
    """Visit boxes by (decreasing score, index); keep one unless a kept box of its category overlaps it
    above the threshold."""
    kept: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
        if all(cats[j] != cats[i] or ref_iou(boxes[j], boxes[i]) <= threshold for j in kept):
            kept.append(i)
    return kept


def grid_boxes(draw, n: int) -> list[list[float]]:
    boxes = []
    for _ in range(n):
        x1, y1 = draw(st.integers(0, 6)), draw(st.integers(0, 6))
        w, h = draw(st.integers(0, 4)), draw(st.integers(0, 4))  # zero width/height included
        boxes.append([float(x1), float(y1), float(x1 + w), float(y1 + h)])
    return boxes


@st.composite
def nms_problems(draw):
    n = draw(st.integers(0, 40))
    boxes = grid_boxes(draw, n)
    scores = [draw(st.sampled_from([0.1, 0.25, 0.5, 0.75, 0.9, 1.0])) for _ in range(n)]
    categories = draw(st.integers(1, 4))
    cats = [draw(st.integers(0, categories - 1)) for _ in range(n)]
    threshold = draw(st.sampled_from([0.0, 1 / 3, 0.5, 0.7, 1.0]) | st.floats(0.0, 1.0))
    block = draw(st.sampled_from([128, 1, 3, 7]))  # small blocks exercise the block boundaries
    return boxes, scores, cats, threshold, block


def as_tensors(boxes, scores, cats=None):
    b = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    s = torch.tensor(scores, dtype=torch.float64)
    return (b, s) if cats is None else (b, s, torch.tensor(cats, dtype=torch.long))


@given(nms_problems())
def test_batched_nms_matches_greedy_reference(problem):
    boxes, scores, cats, threshold, block = problem
    b, s, c = as_tensors(boxes, scores, cats)
    with mock.patch.object(boxes_module, "_BLOCK", block), mock.patch.object(boxes_module, "_KEPT_CHUNK", 2):
        kept = batched_nms(b, s, c, threshold)
        kept_single = nms(b, s, threshold)
    assert kept.dtype == torch.long
    assert kept.tolist() == ref_batched_nms(boxes, scores, cats, threshold)
    assert kept_single.tolist() == ref_batched_nms(boxes, scores, [0] * len(boxes), threshold)


def test_batched_nms_many_boxes_across_blocks():
    gen = torch.Generator().manual_seed(0)
    xy = torch.randint(0, 30, (700, 2), generator=gen).double()
    wh = torch.randint(1, 8, (700, 2), generator=gen).double()
    b = torch.cat((xy, xy + wh), 1)
    s = torch.randint(0, 50, (700,), generator=gen).double()
    c = torch.randint(0, 3, (700,), generator=gen)
    expected = ref_batched_nms(b.tolist(), s.tolist(), c.tolist(), 0.3)
    assert batched_nms(b, s, c, 0.3).tolist() == expected
    assert batched_nms(b.float(), s.float(), c, 0.3).tolist() == expected  # float32: same grid, same IoUs


def test_nms_hand_cases():
    overlapping = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.9]])  # IoU 0.95
    scores = torch.tensor([0.6, 0.9])
    assert batched_nms(overlapping, scores, torch.tensor([1, 1]), 0.5).tolist() == [1]
    assert batched_nms(overlapping, scores, torch.tensor([1, 2]), 0.5).tolist() == [1, 0]
    at_threshold = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 2.0]])  # IoU exactly 0.5
    assert nms(at_threshold, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(at_threshold, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]
    tied = torch.tensor([[5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    assert nms(tied, torch.tensor([0.5, 0.5, 0.5]), 0.5).tolist() == [0, 1]  # equal scores: lower index first
    # A chain: box 0 suppresses box 1, which (suppressed) must not suppress box 2; box 0 and 2 are disjoint.
    chain = torch.tensor([[0.0, 0.0, 4.0, 1.0], [2.0, 0.0, 6.0, 1.0], [4.0, 0.0, 8.0, 1.0]])  # neighbours: IoU 1/3
    assert nms(chain, torch.tensor([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 2]
    assert nms(chain, torch.tensor([0.8, 0.9, 0.7]), 0.3).tolist() == [1]


def test_nms_empty_and_dtypes():
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.long and empty.shape == (0,)
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.1], [3.0, 3.0, 4.0, 4.0]])
    s = torch.tensor([0.2, 0.9, 0.5])
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert nms(b.to(dtype), s.to(dtype), 0.5).tolist() == [1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(2)
    xy = torch.randint(0, 30, (300, 2), generator=gen).double()
    b = torch.cat((xy, xy + torch.randint(0, 8, (300, 2), generator=gen).double()), 1)
    s = torch.randint(0, 20, (300,), generator=gen).double()
    c = torch.randint(0, 3, (300,), generator=gen)
    kept = batched_nms(b.cuda(), s.cuda(), c.cuda(), 0.4)
    assert kept.device.type == "cuda"
    assert kept.tolist() == batched_nms(b, s, c, 0.4).tolist()
    assert torch.equal(box_iou(b.cuda(), b.cuda()).cpu(), box_iou(b, b))


def test_nms_bad_input():
    with pytest.raises(UserError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(UserError, match="boxes"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(UserError, match="idxs"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5)
    with pytest.raises(UserError, match="iou_threshold"):
        nms(torch.zeros(3, 4), torch.zeros(3), float("nan"))


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 1.0, 3.0]])  # second: zero width
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0], [1.0, 1.0, 1.0, 3.0]])
    expected = torch.tensor([[1 / 7, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # 1 / (4 + 4 - 1); empty pairs: 0
    iou = box_iou(a, b)
    assert iou.shape == (2, 4)
    assert torch.allclose(iou, expected, rtol=0, atol=1e-7)
    assert not iou.isnan().any()
    assert box_iou(torch.zeros(0, 4), b).shape == (0, 4)


@given(st.lists(st.lists(st.integers(-5, 5), min_size=4, max_size=4), min_size=1, max_size=6))
def test_box_iou_matches_reference(rows):
    boxes = [[float(min(r[0], r[2])), float(min(r[1], r[3])), float(max(r[0], r[2])), float(max(r[1], r[3]))]
             for r in rows]
    t = torch.tensor(boxes, dtype=torch.float64)
    iou = box_iou(t, t.flip(0))
    assert iou.tolist() == [[ref_iou(p, q) for q in boxes[::-1]] for p in boxes]


def test_conversions_hand_and_roundtrip():
    ltrb = torch.tensor([[0.25, 0.5, 0.75, 1.0]])
    assert ltrb_to_xywh(ltrb).tolist() == [[0.5, 0.75, 0.5, 0.5]]
    assert xywh_to_ltrb(ltrb_to_xywh(ltrb)).tolist() == ltrb.tolist()
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(2, 50, 2, generator=gen, dtype=torch.float64)
    boxes = torch.cat((xy, xy + torch.rand(2, 50, 2, generator=gen, dtype=torch.float64)), -1)
    assert torch.allclose(xywh_to_ltrb(ltrb_to_xywh(boxes)), boxes, rtol=0, atol=1e-15)
    xywh = ltrb_to_xywh(boxes)
    assert torch.allclose(ltrb_to_xywh(xywh_to_ltrb(xywh)), xywh, rtol=0, atol=1e-15)
    with pytest.raises(UserError, match="boxes"):
        ltrb_to_xywh(torch.zeros(3, 3))
