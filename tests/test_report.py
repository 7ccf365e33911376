"""The report's rendering (not yet wired into the pipeline): an executed notebook becomes one self-contained
HTML page without code, and headless Chromium draws it (a screenshot that is not blank)."""
import base64
import io

import nbformat
import numpy as np
from PIL import Image

from addlib import report as R


def _notebook(path):
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(buf, format="PNG")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Table 2 at this scale"),
                nbformat.v4.new_code_cell("secret_code_line = 1", outputs=[
                    nbformat.v4.new_output("display_data", data={
                        "text/html": "<table><tr><th>model</th><th>fid</th></tr><tr><td>student</td><td>2.5</td></tr></table>",
                        "text/plain": "table"}),
                    nbformat.v4.new_output("display_data", data={
                        "image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": "img"})])]
    nbformat.write(nb, str(path))


def test_notebook_to_html_has_outputs_and_no_code(tmp_path):
    _notebook(tmp_path / "nb.ipynb")
    html = R.notebook_to_html(tmp_path / "nb.ipynb", tmp_path / "out" / "index.html", title="ADD report").read_text()
    assert "Table 2 at this scale" in html and "<td>student</td><td>2.5</td>" in html
    assert "secret_code_line" not in html
    assert "data:image/png;base64," in html  # the figure is inside the page
    assert "<title>ADD report</title>" in html


def test_chromium_draws_the_page(tmp_path):
    """Needs Debian's chromium, which `make test` installs."""
    _notebook(tmp_path / "nb.ipynb")
    page = R.notebook_to_html(tmp_path / "nb.ipynb", tmp_path / "index.html")
    png = R.screenshot(page, tmp_path / "shot.png", width=800, height=600)
    im = Image.open(png).convert("RGB")
    assert im.size == (800, 600)
    colours = im.getcolors(maxcolors=1 << 20)
    assert len(colours) > 10  # text and the red figure, not a blank page
    assert any(r > 150 and g < 80 and b < 80 for _, (r, g, b) in colours)  # the embedded image is drawn


def test_the_report_page_has_a_table_of_contents_whose_links_land(tmp_path, root):
    """Every link of the contents line points at an anchor that survives the rendering; Table 1 comes before
    the diagnostics."""
    import re

    nb = nbformat.read(str(root / "notebooks" / "report.ipynb"), as_version=4)
    nb.cells = [c for c in nb.cells if c.cell_type == "markdown"]  # the page's text, without running it
    nbformat.write(nb, str(tmp_path / "r.ipynb"))
    page = R.notebook_to_html(tmp_path / "r.ipynb", tmp_path / "r.html").read_text()
    links = re.findall(r'href="#([^"]+)"', page.split("Contents:")[1].split("</p>")[0])
    assert len(links) == 11
    for a in links:
        assert f'id="{a}"' in page, a
    assert page.index('id="sec-table1"') < page.index('id="sec-refinement"')


def test_compact_images_keep_every_grey_level_and_take_fewer_bytes(tmp_path):
    rng = np.random.default_rng(0)
    grey = np.kron(rng.integers(0, 256, (28, 36), dtype=np.uint8), np.ones((8, 8), np.uint8))  # 256 levels at most
    rgba = Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)]), "RGBA")
    rgba.save(tmp_path / "grid.png", optimize=True)
    shown = R.compact_image(tmp_path / "grid.png", 300)
    stored = Image.open(io.BytesIO(shown.data))
    assert shown.width == 300 and stored.size == rgba.size
    assert np.array_equal(np.asarray(stored.convert("L")), grey)  # the same picture, pixel for pixel
    assert len(shown.data) < (tmp_path / "grid.png").stat().st_size
