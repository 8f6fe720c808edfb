"""The detection run report's picture: test images with predicted and ground-truth boxes (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..atomic import atomic_write


def draw_predictions(path: Path, images: torch.Tensor, targets: Sequence[dict[str, Any]],
                     detections: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                     category_names: Sequence[str], min_score: float, mean: Sequence[float],
                     std: Sequence[float]) -> None:
    """Write ``path`` (PNG): a grid of ``images`` (B, 3, S, S), normalised with ``mean``/``std``, each with its
    detections scoring >= ``min_score`` (ltrb relative boxes, one colour per class, "name score") and its
    ground truth (white, dashed). ``category_names[label]`` names a contiguous label (0 = background)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    count = images.shape[0]
    columns = min(count, 3)
    rows = (count + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    palette = plt.get_cmap("tab10")
    side = images.shape[-1]
    pixels = images * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index >= count:
            continue
        ax.imshow(pixels[index].permute(1, 2, 0).clamp(0, 1).numpy(), extent=(0, side, side, 0))
        for box in targets[index]["boxes"].tolist():
            ax.add_patch(_rectangle(box, side, "white", "--"))
        boxes, labels, scores = detections[index]
        for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
            if score < min_score:
                continue
            colour = palette(label % 10)
            ax.add_patch(_rectangle(box, side, colour, "-"))
            ax.text(box[0] * side, box[1] * side, f"{category_names[label]} {score:.2f}", color="black", fontsize=6,
                    va="bottom", bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "linewidth": 0})
        ax.set_title(f"image {int(targets[index]['image_id'])}", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def _rectangle(box: Sequence[float], side: int, colour: Any, style: str) -> Any:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (v * side for v in box)
    return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.2, linestyle=style)
