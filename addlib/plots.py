"""Figures: image grids with their prompts, training curves, Table 2's plots and Table 1's bars."""
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


def _method_lines(rows: list[dict]) -> dict[str, list[dict]]:
    lines: dict[str, list[dict]] = {}
    for r in rows:
        lines.setdefault(f"{r['model']} {r['sampler']}", []).append(r)
    return lines


def fid_vs_nfe(rows: list[dict], floor: float, path: str | Path, title: str = "") -> Path:
    """FID against network evaluations per image, one line per method, the real-vs-real floor dashed."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, rs in _method_lines(rows).items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in rs], [r["fid"] for r in rs], "o-", lw=1.2, ms=4, label=name)
        for r in rs:
            ax.annotate(str(r["steps"]), (r["nfe"], r["fid"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(floor, ls="--", c="gray", lw=1, label=f"real vs real floor ({floor:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    nfes = sorted({r["nfe"] for r in rows})
    ax.set_xticks(nfes)
    _plain_log_ticks(ax)
    ax.set_xlabel("network evaluations per image (NFE; labels: steps)")
    ax.set_ylabel("FID (in-domain features)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)


def quality_vs_time(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Figure 7's layout: FID and CLIP score against seconds per image at batch 1."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, ax in zip(("fid", "clip_score"), axes):
        for name, rs in _method_lines(rows).items():
            rs = sorted(rs, key=lambda r: r["seconds_per_image"])
            ax.plot([r["seconds_per_image"] for r in rs], [r[key] for r in rs], "o-", lw=1.2, ms=4, label=name)
            for r in rs:
                ax.annotate(str(r["steps"]), (r["seconds_per_image"], r[key]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xscale("log")
        if key == "fid":
            ax.set_yscale("log")
        _plain_log_ticks(ax, "both" if key == "fid" else "x")
        ax.set_xlabel("seconds per image, batch 1 (labels: steps)")
        ax.set_ylabel({"fid": "FID (lower is better)", "clip_score": "CLIP score (higher is better)"}[key])
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def ablation_bars(table1: dict, path: str | Path, title: str = "") -> Path:
    """Table 1 as a figure: per sub-table, each row's 1-step FID (mean over seeds, std as whiskers) on a linear
    axis from zero, so bar lengths compare. A row far worse than the others (a collapsed run, 100x the rest) is
    cut at the axis' end and its value written on the bar."""
    n = len(table1)
    cols = min(n, 4)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 0.5 + 2.1 * nrows), squeeze=False)
    for ax, (name, t) in zip(axes.flat, table1.items()):
        rows = [r for r in t["rows"] if "fid" in r]
        fids = sorted(r["fid"] for r in rows)
        # the axis ends a little past the largest row that is not an outlier (> 4x the median FID)
        median = fids[(len(fids) - 1) // 2] if fids else 1.0  # the lower median: two rows, one collapsed
        inliers = [r["fid"] + r["fid_std"] for r in rows if r["fid"] <= 4 * median] or [1.0]
        xmax = 1.3 * max(inliers)
        ys = list(range(len(rows)))
        ax.barh(ys, [min(r["fid"], xmax) for r in rows],
                xerr=[r["fid_std"] if r["fid"] <= xmax else 0.0 for r in rows], color="tab:blue", alpha=0.75,
                error_kw=dict(lw=1, capsize=2))
        for y, r in zip(ys, rows):  # the value beside the whisker; inside the bar where the bar is cut
            cut = r["fid"] > xmax
            x = 0.98 * xmax if cut else r["fid"] + r["fid_std"] + 0.02 * xmax
            ax.text(x, y, f"{r['fid']:.3g}" + (" (cut)" if cut else ""), va="center", ha="right" if cut else "left",
                    fontsize=6, color="white" if cut else "black")
        ax.set_yticks(ys, [f"{r['row']} (n={r['seeds']})" for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, xmax)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.supxlabel("1-step FID (lower is better; linear axis from 0)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _plain_log_ticks(ax, axis: str = "both") -> None:
    """Log axes labelled with plain numbers (1, 2, 4, 8, 0.5, ...) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    for a in ([ax.xaxis, ax.yaxis] if axis == "both" else [getattr(ax, f"{axis}axis")]):
        if a is ax.yaxis or not ax.get_xticks().size:
            a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 0.2, 0.5, 1, 2, 5, ...
        a.set_major_formatter(fmt)
        a.set_minor_formatter(NullFormatter())


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path
