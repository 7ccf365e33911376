"""The grid builder the student grid and Figure 4 share: block b of row r holds that row's samples of model
(or step count) b, in order, so a column compares one noise across blocks."""
import pytest
import torch

from addlib import plots


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
