"""A classifier's test report: accuracy, loss, per-class accuracy, confusion matrix, most confidently wrong images."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from dlexp.io import atomic_write_bytes


def confusion_png(matrix: torch.Tensor, path: Path, cell: int = 28) -> torch.Tensor:
    """Confusion-matrix heatmap (rows true, columns predicted) with counts, as a PNG; returns it (3, H, W)."""
    k = matrix.shape[0]
    margin = cell
    size = margin + k * cell + 1
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    rows = matrix.double() / matrix.sum(dim=1, keepdim=True).clamp_min(1)  # share of each true class
    for i in range(k):
        draw.text((4, margin + i * cell + cell // 3), str(i), fill="black")       # true class, left
        draw.text((margin + i * cell + cell // 3, 4), str(i), fill="black")       # predicted class, top
        for j in range(k):
            shade = int(255 * (1 - float(rows[i, j])))
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=(shade, shade, 255), outline="grey")
            draw.text((x0 + 3, y0 + cell // 3), str(int(matrix[i, j])), fill="white" if shade < 128 else "black")
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def confusion_markdown(matrix: torch.Tensor) -> str:
    k = matrix.shape[0]
    lines = ["| true \\ predicted | " + " | ".join(str(j) for j in range(k)) + " | acc |",
             "|---" * (k + 2) + "|"]
    for i in range(k):
        acc = float(matrix[i, i]) / max(1, int(matrix[i].sum()))
        lines.append(f"| **{i}** | " + " | ".join(str(int(v)) for v in matrix[i]) + f" | {acc:.3f} |")
    return "\n".join(lines) + "\n"


def class_report(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[dict[str, float], torch.Tensor]:
    """Accuracy, loss and per-class accuracy of logits (N, K) against labels (N,); and the confusion matrix."""
    predicted = logits.argmax(dim=1)
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
    matrix.index_put_((y, predicted), torch.ones_like(y), accumulate=True)
    metrics = {"eval/acc": float((predicted == y).double().mean()), "eval/loss": float(F.cross_entropy(logits, y)),
               "eval/n_test": len(y)}
    for c in range(num_classes):
        metrics[f"eval/acc_class_{c}"] = float(matrix[c, c]) / max(1, int(matrix[c].sum()))
    return metrics, matrix
