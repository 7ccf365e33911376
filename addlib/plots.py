"""Figure primitives every stage uses: image grids with their prompts, training curves, embeddings, notes.
The paper's result figures (Table 2's plots, Table 1's bars) are figures.py, so changing them reruns only the
stages that draw them."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _as_hwc(image: torch.Tensor):
    """(C, H, W) uint8 or [-1, 1] float -> (H, W[, 3]) float array in [0, 1]."""
    x = image.detach().cpu()
    x = x.float() / 255.0 if x.dtype == torch.uint8 else (x.float().clamp(-1, 1) + 1) / 2
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def image_grid(rows: Sequence[Sequence[torch.Tensor]], path: str | Path, row_labels: Sequence[str] | None = None,
               cell_labels: Sequence[Sequence[str]] | None = None, title: str | None = None,
               cell_inches: float = 0.8, col_labels: Sequence[str] | None = None) -> Path:
    """Save a grid (one list of images per row), with a label left of each row, over each column of the
    first row (``col_labels``; empty strings for none) and/or under each cell."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    label_w = 2.6 if row_labels else 0.0
    cell_h = cell_inches + (0.3 if cell_labels else 0.0)
    head = (0.4 if title else 0.05) + (0.25 if col_labels else 0.0)  # inches above the grid
    height = n_rows * cell_h + head + 0.05
    fig = plt.figure(figsize=(label_w + n_cols * cell_inches, height))
    gs = fig.add_gridspec(n_rows, n_cols + (1 if row_labels else 0),
                          width_ratios=([label_w / cell_inches] if row_labels else []) + [1] * n_cols,
                          wspace=0.08, hspace=0.45 if cell_labels else 0.05,
                          top=1 - head / height, bottom=0.02)
    off = 1 if row_labels else 0
    for r, row in enumerate(rows):
        if row_labels:
            ax = fig.add_subplot(gs[r, 0])
            ax.axis("off")
            ax.text(1.0, 0.5, row_labels[r], ha="right", va="center", fontsize=8, transform=ax.transAxes)
        for c, img in enumerate(row):
            ax = fig.add_subplot(gs[r, c + off])
            ax.imshow(_as_hwc(img), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if cell_labels:
                ax.set_xlabel(textwrap.fill(cell_labels[r][c], 18), fontsize=5, labelpad=1, linespacing=0.9)
            if col_labels and r == 0 and col_labels[c]:
                ax.set_title(col_labels[c], fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 / height)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def block_grid(blocks: Sequence[tuple[str, torch.Tensor]], row_labels: Sequence[str], per_row: int,
               path: str | Path, title: str | None = None) -> Path:
    """Samples side by side: ``blocks`` is a list of (label, images) whose images hold ``per_row`` samples for
    each row in turn (row r: images[r * per_row:(r + 1) * per_row]); every block becomes ``per_row`` columns
    with its label over the first. With the same noise in every block, a column compares one sample across
    models or step counts (the student grid, Figure 4)."""
    rows: list[list[torch.Tensor]] = [[] for _ in row_labels]
    col_labels: list[str] = []
    for label, images in blocks:
        if len(images) != len(row_labels) * per_row:
            raise ValueError(f"block {label!r}: {len(images)} images for {len(row_labels)} rows x {per_row}")
        for r, row in enumerate(rows):
            row.extend(images[r * per_row:(r + 1) * per_row])
        col_labels += [label] + [""] * (per_row - 1)
    return image_grid(rows, path, row_labels=row_labels, col_labels=col_labels, title=title)


def loss_curve(steps: Sequence[int], values: dict[str, Sequence[float]], path: str | Path,
               title: str = "", logy: bool = True) -> Path:
    """Plot one or more logged curves against the step."""
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, v in values.items():
        ax.plot(steps, v, label=name, lw=1)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def embedding_scatter(z: torch.Tensor, labels: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """2-D PCA of embeddings, coloured by label."""
    z = z.float() - z.float().mean(0)
    _, _, v = torch.pca_lowrank(z, q=2, center=False)
    p = (z @ v[:, :2]).numpy()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    sc = ax.scatter(p[:, 0], p[:, 1], c=labels.numpy(), cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="class")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def note_figure(path: str | Path, text: str) -> Path:
    """A figure that states why the usual plot does not apply (so a declared output always exists)."""
    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, wrap=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path
