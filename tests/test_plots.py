"""The grid builder the student grid and Figure 4 share: block b of row r holds that row's samples of model
(or step count) b, in order, so a column compares one noise across blocks."""
import pytest
import torch

from addlib import figures, plots


def test_block_grid_lays_each_rows_samples_under_each_block(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(plots, "image_grid", lambda rows, path, **kw: seen.update(rows=rows, **kw) or path)
    a = torch.arange(6).float().view(6, 1, 1, 1)  # 3 rows x 2 samples, row-major as the samplers return them
    plots.block_grid([("A", a), ("B", a + 10)], ["r0", "r1", "r2"], 2, tmp_path / "g.png", "t")
    assert [[int(x) for x in row] for row in seen["rows"]] == [[0, 1, 10, 11], [2, 3, 12, 13], [4, 5, 14, 15]]
    assert seen["col_labels"] == ["A", "", "B", ""] and seen["row_labels"] == ["r0", "r1", "r2"]


def test_block_grid_refuses_a_block_of_the_wrong_size_and_renders(tmp_path):
    with pytest.raises(ValueError, match="block 'B': 5 images for 3 rows x 2"):
        plots.block_grid([("A", torch.zeros(6, 1, 4, 4)), ("B", torch.zeros(5, 1, 4, 4))], ["a", "b", "c"], 2,
                         tmp_path / "g.png")
    out = plots.block_grid([("A", torch.rand(4, 3, 8, 8) * 2 - 1)], ["a", "b"], 2, tmp_path / "g.png", "title")
    assert out.is_file() and out.stat().st_size > 1000


def _capture(monkeypatch):
    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: figs.append(fig) or path)
    return figs


def test_table1_bars_are_linear_from_zero_and_cut_an_outlier_with_its_value(monkeypatch, tmp_path):
    figs = _capture(monkeypatch)
    rows = [{"row": "teacher", "seeds": 3, "fid": 1.2, "fid_std": 0.1}, {"row": "random", "seeds": 1, "fid": 56.2,
                                                                         "fid_std": 0.0}]
    figures.ablation_bars({"init": {"rows": rows}}, tmp_path / "t.png")
    ax = figs[0].axes[0]
    assert ax.get_xscale() == "linear" and ax.get_xlim()[0] == 0
    assert ax.get_xlim()[1] == pytest.approx(1.3 * 1.3)  # past the inlier's mean + std, not the outlier's 56.2
    bars = [p.get_width() for p in ax.patches]
    assert bars == [pytest.approx(1.2), pytest.approx(1.3 * 1.3)]
    assert {t.get_text() for t in ax.texts} == {"1.2", "56.2 (cut)"}


def test_fid_vs_nfe_ticks_are_plain_numbers(monkeypatch, tmp_path):
    figs = _capture(monkeypatch)
    rows = [{"model": "teacher", "sampler": "ddim", "steps": k, "nfe": k, "fid": f} for k, f in [(1, 4.2), (8, 0.5),
                                                                                               (50, 0.6)]]
    figures.fid_vs_nfe(rows, 0.27, tmp_path / "f.png")
    ax = figs[0].axes[0]
    figs[0].canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels()] + [t.get_text() for t in ax.get_yticklabels()]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "8", "50"]
    assert labels and not any("10^" in t or "mathdefault" in t for t in labels)
