"""The paper's result figures at this scale: FID against NFE and quality against time (Figure 7's layout,
stage evaluate) and Table 1 as bars (stage report). Kept apart from plots.py's primitives so that a change here
reruns only the stages that draw these figures."""
from __future__ import annotations

from pathlib import Path

from .plots import _save, plt


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


def preference_bars(win: dict[str, dict[str, dict]], path: str | Path, title: str = "") -> Path:
    """The paper's user-study bars (its Figs. 5 and 6): per question, the win rate of one model against each
    opponent with its 95% interval; 50% dashed. ``win``: question -> "a vs b" -> {win_rate, low, high}."""
    questions = list(win)
    fig, axes = plt.subplots(1, len(questions), figsize=(4.2 * len(questions), 0.45 * max(
        len(v) for v in win.values()) + 1.4), squeeze=False, sharey=True)
    for ax, q in zip(axes[0], questions):
        labels = list(win[q])
        rates = [100 * win[q][k]["win_rate"] for k in labels]
        err = [[100 * (win[q][k]["win_rate"] - win[q][k]["low"]) for k in labels],
               [100 * (win[q][k]["high"] - win[q][k]["win_rate"]) for k in labels]]
        ax.barh(range(len(labels)), rates, xerr=err, color="tab:blue", alpha=0.8, capsize=3)
        ax.axvline(50, ls="--", c="gray", lw=1)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("win rate of the first model (%)")
        ax.set_title(q, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def elo_vs_speed(elo: dict[str, dict], seconds: dict[str, float], path: str | Path, title: str = "") -> Path:
    """The paper's speed figure: Elo (mean and 95% interval over orders) against seconds per image."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for m, e in sorted(elo.items()):
        s = seconds[m]
        ax.errorbar([s], [e["mean"]], yerr=[[e["mean"] - e["low"]], [e["high"] - e["mean"]]], fmt="o", ms=5,
                    capsize=3, label=m)
        ax.annotate(m, (s, e["mean"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    _plain_log_ticks(ax, "x")
    ax.set_xlabel("seconds per image (batch 1, this machine)")
    ax.set_ylabel("Elo (prompt following and quality averaged)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
