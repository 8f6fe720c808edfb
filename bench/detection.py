"""Benchmark: SSD detection throughput on the CPU (training and evaluation images/s) and NMS against a loop.

In one process, for each model (the demo's ``ssd_small`` at 64 px, width 8, stride 4; ``ssd_small`` at 128 px,
width 16; and without ``--quick`` NVIDIA's ``ssd300_resnet50`` at 300 px at batch 4; every model with the
embedded shapes' 7 classes):

* **training**: one optimizer step on a batch of the embedded shapes (matching, multibox loss, forward,
  backward, ``SGD.step``, ``Sparsifier.step``), dense and at sparsity 0.9 (uniform masks), in images/s; the
  data loading (decode + augmentation) is timed on its own, per image;
* **evaluation**: forward, decoding, NVIDIA's post-processing (score > 0.05, top 200 per class, NMS 0.5,
  200 per image) and the conversion to COCO results, images/s; ``COCOeval`` on the whole split is timed
  once, per image.

Competitor in the same process: greedy NMS as the reference code runs it (NVIDIA's ``decode_single``: one
class after another, a Python loop popping the best box and suppressing by IoU with tensor ops) against
``sparsetrain.ops.batched_nms`` on the same candidates (random boxes, 80 classes x 200 candidates per class,
as post-processing feeds it); both keep the same boxes (checked); the ratio is loop time / ours.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _measure import OtherProcesses, machine_line, median_time, share  # noqa: E402

from sparsetrain.data.coco_detection import CocoDetection, collate  # noqa: E402
from sparsetrain.data.embedded_detection import embedded_detection_dataset  # noqa: E402
from sparsetrain.models.ssd import build_ssd  # noqa: E402
from sparsetrain.ops.boxes import batched_nms, box_iou  # noqa: E402
from sparsetrain.sparsity import Sparsifier, prune  # noqa: E402
from sparsetrain.tasks.detection_boxes import BoxCoder, multibox_loss, postprocess  # noqa: E402
from sparsetrain.tasks.detection_coco_eval import coco_metrics, coco_results  # noqa: E402


def loop_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou: float) -> torch.Tensor:
    """Per class, repeatedly keep the best remaining box and drop those overlapping it (the reference's loop)."""
    kept = []
    for cls in classes.unique().tolist():
        index = torch.nonzero(classes == cls).flatten()
        order = index[torch.argsort(scores[index], descending=True, stable=True)]
        while order.numel() > 0:
            best = order[0]
            kept.append(int(best))
            rest = order[1:]
            overlap = box_iou(boxes[best].unsqueeze(0), boxes[rest]).squeeze(0)
            order = rest[overlap <= iou]
    kept_t = torch.tensor(kept, dtype=torch.long)
    return kept_t[torch.argsort(scores[kept_t], descending=True, stable=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the two small models only, 3 repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the demo)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    models = [("ssd_small", 64, args.batch, {"width": 8, "stride": 4}), ("ssd_small", 128, args.batch, {})]
    if not args.quick:
        models.append(("ssd300_resnet50", 300, 4, {}))
    rows, eval_rows = [], []
    with tempfile.TemporaryDirectory() as cache, OtherProcesses() as others:
        for name, size, batch, extra in models:
            root = embedded_detection_dataset(cache, n_train=batch * 2, n_val=batch * 2, image_size=min(size, 128))
            train = CocoDetection(root, "train", image_size=size, train=True, seed=0, augment="ssd")
            val = CocoDetection(root, "val", image_size=size, train=False, seed=0)
            torch.manual_seed(0)
            options = {} if name == "ssd300_resnet50" else {"image_size": size, **extra}
            model = build_ssd(name, num_classes=val.num_classes, **options)
            coder = BoxCoder(model.default_boxes())
            start = time.perf_counter()
            items = [train[(i, 1)] for i in range(batch)]
            data_ms = (time.perf_counter() - start) / batch * 1e3
            images, targets = collate(items)
            dense = {k: v.clone() for k, v in model.state_dict().items()}
            speeds = []
            for sparsity in (None, 0.9, None):  # dense again last: the first steps of a process run slower
                model.load_state_dict(dense)
                masks = prune(model, sparsity, method="uniform") if sparsity else None
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
                sparsifier = Sparsifier(model, masks) if masks is not None else None

                def train_step():
                    optimizer.zero_grad(set_to_none=True)
                    locations, labels = coder.encode_batch([(t["boxes"], t["labels"]) for t in targets])
                    offsets, logits = model(images)
                    loss = multibox_loss(offsets, logits, coder.offsets(locations), labels)
                    loss.backward()
                    optimizer.step()
                    if sparsifier is not None:
                        sparsifier.step(optimizer)

                speeds.append(batch / median_time(train_step, repeats, warmup=2).median_s)
            label = f"{name} {size}px" + "".join(f" {k} {v}" for k, v in extra.items())
            rows.append((label, batch, max(speeds[0], speeds[2]), speeds[1], data_ms))

            model.load_state_dict(dense)
            model.eval()
            eval_items = [val[i] for i in range(batch)]
            eval_images, eval_targets = collate(eval_items)

            def evaluate():
                with torch.no_grad():
                    offsets, logits = model(eval_images)
                results = []
                for (b, lab, sc), t in zip(postprocess(coder, offsets, logits), eval_targets):
                    results += coco_results(b, lab, sc, t["image_id"], t["orig_size"], val.label_to_category_id)
                return results

            timing = median_time(evaluate, repeats, warmup=1)
            start = time.perf_counter()
            coco_metrics(val.coco, timing.result, [t["image_id"] for t in eval_targets])
            cocoeval_ms = (time.perf_counter() - start) / batch * 1e3
            eval_rows.append((label, batch, batch / timing.median_s, len(timing.result) / batch,
                              cocoeval_ms))

        g = torch.Generator().manual_seed(0)
        n = 80 * 200
        xy = torch.rand(n, 2, generator=g) * 0.9
        candidates = torch.cat([xy, xy + 0.02 + torch.rand(n, 2, generator=g) * 0.2], 1)
        scores = torch.rand(n, generator=g)
        idxs = torch.arange(n) // 200
        ours = median_time(lambda: batched_nms(candidates, scores, idxs, 0.5), repeats, 1)
        loop = median_time(lambda: loop_nms(candidates, scores, idxs, 0.5), repeats, 1)
        assert torch.equal(ours.result, loop.result), "batched_nms disagrees with the loop"

    print(machine_line())
    print(f"{args.threads} thread(s); median of {repeats} steps after 2 warm-ups; sparse = uniform masks at 0.9 enforced "
          "by Sparsifier.step after SGD.step; dense = the better of a run before and one after the sparse one.\n")
    print("| model | batch | train dense (img/s) | train sparse 0.9 (img/s) | sparse / dense | data (ms/img) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, batch, dense_s, sparse_s, data_ms in rows:
        print(f"| {label} | {batch} | {dense_s:.1f} | {sparse_s:.1f} | {sparse_s / dense_s:.3f} | {data_ms:.2f} |")
    print("\n| model | batch | eval (img/s, forward + post-processing) | detections/img (untrained) | COCOeval (ms/img) |")
    print("|---|---:|---:|---:|---:|")
    for label, batch, speed, dets, cocoeval_ms in eval_rows:
        print(f"| {label} | {batch} | {speed:.1f} | {dets:.0f} | {cocoeval_ms:.1f} |")
    print(f"\nNMS, {n:,} candidates in 80 classes (IoU 0.5, same boxes kept): batched_nms "
          f"{ours.median_s * 1e3:.1f} ms, per-class loop {loop.median_s * 1e3:.1f} ms: "
          f"{loop.median_s / ours.median_s:.1f}x")
    print(f"\nOther processes used {share(others)} of the CPUs.")


if __name__ == "__main__":
    main()
