"""SSD's box coding, matching, multibox loss and post-processing (no model, no data).

Reference semantics: NVIDIA DeepLearningExamples, ``PyTorch/Detection/SSD`` (SSD300 v1.1):
``ssd/utils.py`` (``Encoder.encode``, ``Encoder.scale_back_batch``, ``Encoder.decode_single``) and
``ssd/model.py`` (``Loss``). Where this module departs from it, the docstring of the function says so.

Units and shapes. All boxes are relative to the image (fractions in ``[0, 1]``, unclipped after
decoding). ``D`` is the number of default boxes, ``B`` the batch, ``C`` the number of classes *including*
background, which is class 0; object labels are ``1 .. C-1``.

- default boxes: ``(D, 4)`` xywh (centre x, centre y, width, height), widths and heights > 0.
- matched locations (:meth:`BoxCoder.encode_batch`): ``(B, 4, D)`` xywh, channels first like the
  network's outputs, so :meth:`BoxCoder.offsets` and :func:`multibox_loss` take them as they are.
- offsets (what the network regresses, ``(B, 4, D)``): for a box ``(x, y, w, h)`` and its default box
  ``(dx, dy, dw, dh)``, ``((x - dx) / dw / scale_xy, (y - dy) / dh / scale_xy, log(w / dw) / scale_wh,
  log(h / dh) / scale_wh)``, with ``scale_xy = 0.1`` and ``scale_wh = 0.2`` by default.
- logits: ``(B, C, D)``; labels ``(B, D)`` int64.
"""

from __future__ import annotations


import torch
from torch.nn import functional as F

from ..errors import UserError
from ..ops.boxes import batched_nms, box_iou, ltrb_to_xywh, xywh_to_ltrb
from ..options import is_real_number

__all__ = ["BoxCoder", "hard_negative_mask", "multibox_loss", "postprocess"]


def _is_count(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def _shape(tensor: object) -> str:
    return str(tuple(tensor.shape)) if isinstance(tensor, torch.Tensor) else type(tensor).__name__


class BoxCoder:
    """Matches ground truth to SSD's default boxes and converts boxes to and from network offsets.

    Args:
        default_boxes: ``(D, 4)`` floating xywh default boxes relative to the image (NVIDIA's
            ``DefaultBoxes(order="xywh")``, already clamped to ``[0, 1]`` as it does), widths and heights
            > 0. They stay on their device: :meth:`encode` works there (moving its inputs to it), while
            :meth:`offsets` and :meth:`decode` use a copy on their input's device and dtype.
        scale_xy: centre offsets are divided by it (``0.1``).
        scale_wh: log-size offsets are divided by it (``0.2``).
    """

    def __init__(self, default_boxes: torch.Tensor, scale_xy: float = 0.1, scale_wh: float = 0.2) -> None:
        if not isinstance(default_boxes, torch.Tensor) or default_boxes.dim() != 2 or default_boxes.shape[1] != 4 \
                or default_boxes.shape[0] < 1 or not default_boxes.is_floating_point():
            got = f"{_shape(default_boxes)} {getattr(default_boxes, 'dtype', '')}".strip()
            raise UserError(f"default_boxes must be a floating (D, 4) xywh tensor with D >= 1; got {got}")
        smallest = float(default_boxes[:, 2:].min())
        if not smallest > 0:
            raise UserError(f"default boxes must have widths and heights > 0; the smallest is {smallest}")
        for name, value in (("scale_xy", scale_xy), ("scale_wh", scale_wh)):
            if not is_real_number(value) or not value > 0:
                raise UserError(f"{name}={value!r} must be a number > 0")
        self.default_xywh = default_boxes.detach()
        self.default_ltrb = xywh_to_ltrb(self.default_xywh)
        self.scale_xy = float(scale_xy)
        self.scale_wh = float(scale_wh)
        self._channels_first: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def num_boxes(self) -> int:
        """``D``, the number of default boxes."""
        return self.default_xywh.shape[0]

    def _defaults_like(self, tensor: torch.Tensor) -> torch.Tensor:
        """The default boxes as ``(4, D)`` xywh on ``tensor``'s device and dtype (cached)."""
        key = (tensor.device, tensor.dtype)
        if key not in self._channels_first:
            self._channels_first[key] = self.default_xywh.t().to(device=tensor.device, dtype=tensor.dtype).contiguous()
        return self._channels_first[key]

    def _check_offsets(self, name: str, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3 or tensor.shape[1] != 4 \
                or tensor.shape[2] != self.num_boxes or not tensor.is_floating_point():
            raise UserError(f"{name} must be a floating (B, 4, {self.num_boxes}) tensor (one column per default "
                            f"box); got {_shape(tensor)}")

    def encode(self, boxes_ltrb: torch.Tensor, labels: torch.Tensor,
               iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        """Match one image's ground truth to the default boxes, as NVIDIA's ``Encoder.encode``.

        Every default box takes the ground-truth box of highest IoU with it (the first one on ties).
        Then every ground-truth box, in order, claims its own best default box (first on ties): that
        default box's IoU is set to 2 and its match to this ground truth, so when two ground-truth boxes
        claim the same default box the later one wins (the reference's indexed assignment, made
        deterministic here). A default box is positive when its (possibly raised) IoU is > ``iou_threshold``.

        Args:
            boxes_ltrb: ``(n, 4)`` ground-truth ltrb boxes relative to the image, each with positive width
                and height (a box without area would be forced onto a default box with target log(0));
                ``n = 0`` is allowed.
            labels: ``(n,)`` integer labels, each >= 1.
            iou_threshold: in ``[0, 1]``; positives need IoU strictly above it.

        Returns:
            ``(locations (D, 4) xywh, labels (D,) int64)`` on the default boxes' device: positives get
            their ground-truth box and label, the others their own default box and label 0. With
            ``n = 0`` every default box is background. (The reference routes the negatives' default boxes
            through ltrb and back, which can move them by a rounding error; here they are copied, so their
            offsets are exactly 0. The loss ignores them either way.)
        """
        self._check_target(boxes_ltrb, labels)
        if not is_real_number(iou_threshold) or not 0 <= iou_threshold <= 1:
            raise UserError(f"iou_threshold={iou_threshold!r} must be a number in [0, 1]")
        self._check_values([(boxes_ltrb, labels)])
        return self._match(boxes_ltrb, labels, iou_threshold)

    @staticmethod
    def _check_target(boxes_ltrb: torch.Tensor, labels: torch.Tensor) -> None:
        """Shapes and dtypes of one image's ground truth (no host sync)."""
        if not isinstance(boxes_ltrb, torch.Tensor) or boxes_ltrb.dim() != 2 or boxes_ltrb.shape[1] != 4:
            raise UserError(f"ground-truth boxes must be an (n, 4) ltrb tensor; got {_shape(boxes_ltrb)}")
        n = boxes_ltrb.shape[0]
        if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point() \
                or labels.is_complex() or labels.dtype == torch.bool:
            raise UserError(f"labels must be an integer tensor of shape ({n},) (one per box); got {_shape(labels)}")

    @staticmethod
    def _check_values(targets: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Labels >= 1 and boxes with area, over a whole batch with one host read (the training step's
        only sync here); the offending value is looked up only when there is one."""
        present = [(boxes, labels) for boxes, labels in targets if boxes.shape[0]]
        if not present:
            return
        labels = torch.cat([lab.to(present[0][1].device) for _, lab in present])
        sizes = torch.cat([(b[:, 2:] - b[:, :2]).to(present[0][0].device) for b, _ in present])
        if not bool((labels.min() < 1).cpu() | ~(sizes.min() > 0).cpu()):
            return
        for boxes_ltrb, labels in present:
            lowest = int(labels.min())
            if lowest < 1:
                raise UserError(f"ground-truth label {lowest} is not an object class; labels must be >= 1 "
                                "(0 is background)")
            sizes = boxes_ltrb[:, 2:] - boxes_ltrb[:, :2]
            worst = int(sizes.min(dim=1).values.argmin())
            if not sizes[worst].min() > 0:
                raise UserError(f"ground-truth box {worst} {boxes_ltrb[worst].tolist()} has no area; boxes must "
                                "have x2 > x1 and y2 > y1 (drop such boxes when reading the data)")

    def _match(self, boxes_ltrb: torch.Tensor, labels: torch.Tensor,
               iou_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` of checked input."""
        device, d = self.default_xywh.device, self.num_boxes
        n = boxes_ltrb.shape[0]
        if n == 0:
            return self.default_xywh.clone(), torch.zeros(d, dtype=torch.long, device=device)
        boxes = boxes_ltrb.detach().to(device=device, dtype=self.default_xywh.dtype)
        labels = labels.to(device=device, dtype=torch.long)
        ious = box_iou(boxes, self.default_ltrb)  # (n, D)
        best_iou, match = ious.amax(dim=0), ious.argmax(dim=0)  # argmax: the first maximum on ties
        claimed = ious.argmax(dim=1)  # (n,) each ground truth's best default box
        best_iou = best_iou.index_fill(0, claimed, 2.0)
        claimant = torch.full((d,), -1, dtype=torch.long, device=device)
        claimant.scatter_reduce_(0, claimed, torch.arange(n, device=device), reduce="amax")
        match = torch.where(claimant >= 0, claimant, match)
        positive = best_iou > iou_threshold
        out_labels = torch.where(positive, labels[match], 0)
        locations = torch.where(positive[:, None], ltrb_to_xywh(boxes)[match], self.default_xywh)
        return locations, out_labels

    def encode_batch(self, targets: list[tuple[torch.Tensor, torch.Tensor]],
                     iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` for each ``(boxes_ltrb, labels)`` of a batch.

        Returns:
            ``(locations (B, 4, D) xywh, labels (B, D) int64)``, channels first, on the default boxes' device.
        """
        if not isinstance(targets, (list, tuple)) or not targets:
            raise UserError(f"targets must be a non-empty list of (boxes, labels) pairs; got {targets!r:.60}")
        for boxes, labels in targets:
            self._check_target(boxes, labels)
        if not is_real_number(iou_threshold) or not 0 <= iou_threshold <= 1:
            raise UserError(f"iou_threshold={iou_threshold!r} must be a number in [0, 1]")
        self._check_values(list(targets))
        encoded = [self._match(boxes, labels, iou_threshold) for boxes, labels in targets]
        locations = torch.stack([loc for loc, _ in encoded]).transpose(1, 2).contiguous()
        return locations, torch.stack([lab for _, lab in encoded])

    def offsets(self, locations_xywh: torch.Tensor) -> torch.Tensor:
        """Regression targets of ``(B, 4, D)`` xywh locations: ``(B, 4, D)`` offsets (module docstring),
        computed as the reference's ``Loss._loc_vec`` (``(1 / scale) * (x - dx) / dw``, ``(1 / scale) *
        log(w / dw)``). Widths and heights must be > 0 (else -inf or NaN)."""
        self._check_offsets("locations", locations_xywh)
        d = self._defaults_like(locations_xywh)
        gxy = (1.0 / self.scale_xy) * (locations_xywh[:, :2] - d[:2]) / d[2:]
        gwh = (1.0 / self.scale_wh) * (locations_xywh[:, 2:] / d[2:]).log()
        return torch.cat((gxy, gwh), dim=1)

    def decode(self, offsets: torch.Tensor) -> torch.Tensor:
        """The boxes that ``(B, 4, D)`` offsets encode: ``(B, D, 4)`` ltrb relative to the image, unclipped.

        The inverse of :meth:`offsets`, as the reference's ``scale_back_batch``: ``x = scale_xy * gx * dw
        + dx``, ``w = exp(scale_wh * gw) * dw``, then ``x1 = x - w / 2``, ``x2 = x + w / 2``. Unlike the
        reference it leaves ``offsets`` unchanged. Differentiable."""
        self._check_offsets("offsets", offsets)
        d = self._defaults_like(offsets)
        xy = self.scale_xy * offsets[:, :2] * d[2:] + d[:2]
        wh = (self.scale_wh * offsets[:, 2:]).exp() * d[2:]
        return xywh_to_ltrb(torch.cat((xy, wh), dim=1).transpose(1, 2))


def hard_negative_mask(ce: torch.Tensor, positive: torch.Tensor, ratio: float = 3) -> torch.Tensor:
    """The hard negatives of NVIDIA's ``Loss``: the negatives of highest cross-entropy, ``ratio`` per positive.

    Per image, the cross-entropies are ranked in decreasing order after setting the positives' to 0 (the
    reference's double sort; ties go to the lower index here, the reference's sort is unstable), and the
    boxes ranked below ``min(ratio * num_positive, D)`` are selected. Returned are the selected
    *negatives*: the reference's mask also holds the positives ranked that low, which changes nothing
    since the loss counts positives anyway. So an image selects its ``min(ceil(ratio * pos), D - pos)``
    hardest negatives whenever its negatives' cross-entropies are > 0 (and none when it has no positive).

    Args:
        ce: ``(B, D)`` per-box cross-entropy (any real values; only their order matters).
        positive: ``(B, D)`` bool, the positive default boxes.
        ratio: negatives per positive, a number > 0 (3 in SSD).

    Returns:
        ``(B, D)`` bool, disjoint from ``positive``. Not differentiable.
    """
    if not isinstance(ce, torch.Tensor) or ce.dim() != 2 or not ce.is_floating_point():
        raise UserError(f"ce must be a floating (B, D) tensor; got {_shape(ce)}")
    if not isinstance(positive, torch.Tensor) or positive.shape != ce.shape or positive.dtype != torch.bool:
        raise UserError(f"positive must be a bool tensor of ce's shape {tuple(ce.shape)}; got {_shape(positive)}")
    if not is_real_number(ratio) or not ratio > 0:
        raise UserError(f"ratio={ratio!r} must be a number > 0 (hard negatives per positive)")
    with torch.no_grad():
        b, d = ce.shape
        ranked = ce.detach().masked_fill(positive, 0)
        order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(d, device=ce.device).expand(b, d))
        quota = (ratio * positive.sum(dim=1)).clamp(max=d)
        return (rank < quota[:, None]) & ~positive


def multibox_loss(pred_offsets: torch.Tensor, pred_logits: torch.Tensor, target_offsets: torch.Tensor,
                  target_labels: torch.Tensor, negative_ratio: float = 3) -> torch.Tensor:
    """SSD's multibox loss, as NVIDIA's ``Loss.forward``.

    Per image: smooth-L1 (beta 1) between predicted and target offsets, summed over the 4 coordinates of
    the positive boxes (``label > 0``); plus the cross-entropy of the positives and of the hard negatives
    (:func:`hard_negative_mask` with ``negative_ratio``); divided by the image's number of positives. An
    image without positives contributes 0 (but still counts in the mean). The result is the mean over
    the batch.

    Args:
        pred_offsets: ``(B, 4, D)`` predicted offsets.
        pred_logits: ``(B, C, D)`` class logits, background = class 0.
        target_offsets: ``(B, 4, D)`` from :meth:`BoxCoder.offsets` (only the positives' columns matter).
        target_labels: ``(B, D)`` integer labels in ``[0, C)``.
        negative_ratio: hard negatives per positive (> 0).

    Returns:
        A scalar tensor (dtype of the inputs), differentiable in the predictions.
    """
    if not isinstance(pred_offsets, torch.Tensor) or pred_offsets.dim() != 3 or pred_offsets.shape[1] != 4:
        raise UserError(f"pred_offsets must be a (B, 4, D) tensor; got {_shape(pred_offsets)}")
    b, _, d = pred_offsets.shape
    if not isinstance(target_offsets, torch.Tensor) or target_offsets.shape != pred_offsets.shape:
        raise UserError(f"target_offsets must have pred_offsets' shape {(b, 4, d)}; got {_shape(target_offsets)}")
    if not isinstance(pred_logits, torch.Tensor) or pred_logits.dim() != 3 or pred_logits.shape[0] != b \
            or pred_logits.shape[2] != d or pred_logits.shape[1] < 2:
        raise UserError(f"pred_logits must be a ({b}, C, {d}) tensor with C >= 2; got {_shape(pred_logits)}")
    if not isinstance(target_labels, torch.Tensor) or target_labels.shape != (b, d) \
            or target_labels.is_floating_point() or target_labels.dtype == torch.bool:
        raise UserError(f"target_labels must be an integer ({b}, {d}) tensor; got {_shape(target_labels)}")
    target_labels = target_labels.long()
    positive = target_labels > 0
    num_pos = positive.sum(dim=1)
    smooth_l1 = F.smooth_l1_loss(pred_offsets, target_offsets, reduction="none", beta=1.0).sum(dim=1)
    loc = (smooth_l1 * positive).sum(dim=1)
    ce = F.cross_entropy(pred_logits, target_labels, reduction="none")
    counted = positive | hard_negative_mask(ce, positive, negative_ratio)
    conf = (ce * counted).sum(dim=1)
    per_image = (loc + conf) * (num_pos > 0) / num_pos.clamp(min=1)
    return per_image.mean()


@torch.no_grad()
def postprocess(coder: BoxCoder, pred_offsets: torch.Tensor, pred_logits: torch.Tensor, score_threshold: float = 0.05,
                candidates_per_class: int = 200, nms_iou: float = 0.5,
                max_detections: int = 200) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Detections from network outputs, as NVIDIA's ``Encoder.decode_batch``.

    Per image: boxes from :meth:`BoxCoder.decode`; class probabilities by softmax over the ``C`` classes;
    for every object class (background 0 skipped) the default boxes whose probability is >
    ``score_threshold``, at most ``candidates_per_class`` of them (the highest; ties: lower default box
    first); NMS per class (:func:`~sparsetrain.ops.boxes.batched_nms`, one call over all the image's
    (box, class) candidates); then the ``max_detections`` highest-scoring detections over all classes.

    Departures from the reference, all at exact ties only or in ordering: NMS suppresses IoU strictly
    above ``nms_iou`` (torchvision's rule; the reference's loop suppresses at ``>=``); the output is sorted
    by *decreasing* score (the reference returns increasing), ties by lower class then lower default box.

    Args:
        coder: the :class:`BoxCoder` of the network's default boxes.
        pred_offsets: ``(B, 4, D)`` predicted offsets.
        pred_logits: ``(B, C, D)`` logits, ``C >= 2``.
        score_threshold: in ``[0, 1)``.
        candidates_per_class: >= 1.
        nms_iou: a real number (see :func:`~sparsetrain.ops.boxes.nms`).
        max_detections: >= 1.

    Returns:
        One ``(boxes (k, 4) ltrb relative and unclipped, labels (k,) int64 in 1..C-1, scores (k,))`` per
        image, ``k <= max_detections``, on the inputs' device, float32 at least (half inputs are upcast).
    """
    if not isinstance(coder, BoxCoder):
        raise UserError(f"coder must be a BoxCoder; got {type(coder).__name__}")
    coder._check_offsets("pred_offsets", pred_offsets)
    b, _, d = pred_offsets.shape
    if not isinstance(pred_logits, torch.Tensor) or pred_logits.dim() != 3 or pred_logits.shape[0] != b \
            or pred_logits.shape[2] != d or pred_logits.shape[1] < 2 or not pred_logits.is_floating_point():
        raise UserError(f"pred_logits must be a floating ({b}, C, {d}) tensor with C >= 2; got {_shape(pred_logits)}")
    if not is_real_number(score_threshold) or not 0 <= score_threshold < 1:
        raise UserError(f"score_threshold={score_threshold!r} must be a number in [0, 1)")
    if not is_real_number(nms_iou):
        raise UserError(f"nms_iou={nms_iou!r} must be a real number (useful values lie in [0, 1])")
    for name, value in (("candidates_per_class", candidates_per_class), ("max_detections", max_detections)):
        if not _is_count(value):
            raise UserError(f"{name}={value!r} must be an int >= 1")
    dtype = torch.promote_types(torch.promote_types(pred_offsets.dtype, pred_logits.dtype), torch.float32)
    boxes = coder.decode(pred_offsets.to(dtype))  # (B, D, 4)
    probs = F.softmax(pred_logits.to(dtype), dim=1)[:, 1:]  # (B, C-1, D): object classes only
    results = []
    for image_boxes, image_probs in zip(boxes, probs):
        cls, box = (image_probs > score_threshold).nonzero(as_tuple=True)  # class-major, boxes ascending
        scores = image_probs[cls, box]
        # Order the candidates by (class, decreasing score, default box) with two stable sorts, then keep
        # the first candidates_per_class of each class (rank inside its class's run).
        order = torch.sort(scores, descending=True, stable=True).indices
        order = order[torch.sort(cls[order], stable=True).indices]
        cls, box, scores = cls[order], box[order], scores[order]
        counts = torch.bincount(cls, minlength=image_probs.shape[0])
        run_start = counts.cumsum(0) - counts
        within = torch.arange(cls.numel(), device=cls.device) - run_start[cls]
        top = within < candidates_per_class
        cls, box, scores = cls[top], box[top], scores[top]
        kept = batched_nms(image_boxes[box], scores, cls, nms_iou)[:max_detections]
        results.append((image_boxes[box[kept]], cls[kept] + 1, scores[kept]))
    return results
