"""The HTML report (stage ``report``): the pieces notebooks/report.ipynb lays out (tables read from the stages'
outputs), the executed notebooks rendered without their code, and a headless-browser screenshot to check that
a page renders.

Pages are self-contained: figures shown with ``IPython.display.Image`` are stored in the notebook as base64
PNG and nbconvert inlines them, so ``reports/html/index.html`` opens from disk; the per-stage pages it links
to are in ``reports/html/stages/``.
"""
from __future__ import annotations

import csv
import html as H
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from .columns import TABLE1, TABLE1_DIGITS, TABLE2, TABLE2_DIGITS, header
from .paths import REPORTS

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def notebook_to_html(notebook: str | Path, html: str | Path, title: str | None = None) -> Path:
    """Render an executed notebook to one HTML file without input cells (``nbconvert --no-input``)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    if title:
        nb.metadata["title"] = title
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    html = Path(html)
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(body, encoding="utf-8")
    return html


def render_site(index_notebook: str | Path, pages: dict[str, Path], out_dir: str | Path) -> Path:
    """index.html from the report's executed notebook, and stages/<name>.html for every executed stage notebook
    that exists (the index links to them)."""
    import re

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    style = re.compile(r"<style[^>]*>.*?</style>\s*", re.S)
    css = None
    for name, nb in pages.items():
        if Path(nb).is_file():
            page = notebook_to_html(nb, out_dir / "stages" / f"{name}.html", title=f"ADD: stage {name}")
            text = page.read_text(encoding="utf-8")
            # The stage pages share one stylesheet (nbconvert inlines ~260 KB of CSS into every page).
            css = css or "\n".join(m.group(0).split(">", 1)[1].rsplit("</style>", 1)[0] for m in style.finditer(text))
            first = style.search(text)
            if first:
                text = text[:first.start()] + '<link rel="stylesheet" href="style.css">\n' + style.sub("", text[first.start():])
            page.write_text(text, encoding="utf-8")
    if css is not None:
        (out_dir / "stages" / "style.css").write_text(css, encoding="utf-8")
    return notebook_to_html(index_notebook, out_dir / "index.html", title="Adversarial Diffusion Distillation: report")


def compact_image(png: str | Path, width: int):
    """A PNG for the index page, shown ``width`` pixels wide and stored with a 256-colour palette: the page embeds
    every image, and the grids of digits (grey levels and a few colours) lose nothing visible but half their bytes."""
    import io

    from IPython.display import Image
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.open(png).convert("RGB").quantize(256).save(buf, format="PNG", optimize=True)
    return Image(data=buf.getvalue(), format="png", width=width)


def html_table(rows: list[dict], columns: list[str], header: list[str] | None = None, digits: dict | None = None,
               table_id: str | None = None) -> str:
    """A plain HTML table (values formatted with ``digits[column]`` decimals)."""
    digits = digits or {}

    def fmt(c, v):
        if isinstance(v, float):
            return f"{v:.{digits.get(c, 3)}f}"
        return H.escape(str(v))

    head = "".join(f"<th>{H.escape(h)}</th>" for h in (header or columns))
    body = "".join("<tr>" + "".join(f"<td>{fmt(c, r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident} class=\"add-table\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table2_html(root: Path = Path(".")) -> str:
    """Table 2 at this scale: every row of the evaluate stage's comparison.csv."""
    with open(root / REPORTS / "tables" / "comparison.csv") as f:
        rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return html_table(rows, list(TABLE2), [header(c) for c in TABLE2], TABLE2_DIGITS, table_id="table2")


def targets_html(root: Path = Path(".")) -> str:
    """The evaluation issue's targets: value, bar, met."""
    ev = json.loads((root / REPORTS / "metrics" / "evaluate.json").read_text())
    rows = [{"target": k, "value": v["value"], "bar": v["bar"], "value_detail": v.get("value_detail", "-"),
             "bar_detail": v.get("bar_detail", "-"), "met": "yes" if v["met"] else "NO"}
            for k, v in ev["targets"].items()]
    return (html_table(rows, ["target", "value", "bar", "value_detail", "bar_detail", "met"],
                       ["target", "value", "bar", "value (detail space)", "bar (detail space)",
                        "met (in both spaces)"], table_id="targets") +
            f"<p>{ev['targets_met']} of {ev['targets_total']} targets met. FID noise floor (two disjoint halves of "
            f"the reference split): {ev['fid_floor_split_halves']:.3f}; {ev['num_samples']} samples per row, "
            f"{H.escape(ev['fid_features'])} features, CLIP score with the {H.escape(ev['clip_model'])}.</p>")


def table1_html(order: list[str] | None = None, root: Path = Path(".")) -> str:
    """Table 1 at this scale: one table per ablation (in ``order``, params.yaml's), mean ± std over seeds, the
    paper's FID, the sentence."""
    from .ablations import TITLES, _cell

    t1 = json.loads((root / REPORTS / "ablations" / "table1.json").read_text())
    parts = []
    for name in order or list(t1):
        t = t1[name]
        rows = [{"row": r["row"], "seeds": r["seeds"], **{m: _cell(r, m, TABLE1_DIGITS[m]) for m in TABLE1},
                 "paper_fid": "-" if r.get("paper_fid") is None else f"{r['paper_fid']:g}"} for r in t["rows"]]
        parts.append(f"<h3>{H.escape(TITLES.get(name, name))}</h3>" + html_table(
            rows, ["row", "seeds", *TABLE1, "paper_fid"],
            ["row", "seeds", *map(header, TABLE1), "paper's FID (COCO)"],
            table_id=f"table1-{name}") + f"<p>{H.escape(t['sentence'])}</p>")
    return "\n".join(parts)


def table1_base_html(table1_add: dict, add: dict) -> str:
    """One sentence: whether Table 1's ADD settings (ablations.add) are the main run's (add), and where not."""
    from .ablations import departures

    diff = departures(table1_add, add)
    if not diff:
        return ("<p id=\"table1-base\">Table 1's ADD settings (<code>ablations.add</code>) are the main run's "
                "(<code>add</code>), but for the budget: its default row is the student of Table 2 trained "
                "shorter.</p>")
    items = "; ".join(f"<code>{H.escape(k)}</code> (Table 1: {H.escape(repr(a))}, the main run: {H.escape(repr(b))})"
                      for k, (a, b) in diff.items())
    return (f"<p id=\"table1-base\"><b>Table 1's ADD settings (<code>ablations.add</code>) differ from the main run's "
            f"(<code>add</code>)</b> in {len(diff)} {'key' if len(diff) == 1 else 'keys'}: {items}. Its rows are "
            f"variants of its own settings, not of the student in Table 2.</p>")


def links_html(pages: dict[str, Path]) -> str:
    """Links to the per-stage pages (rendered beside the index by render_site)."""
    items = "".join(f'<li><a href="stages/{H.escape(n)}.html">{H.escape(n)}</a></li>' for n, p in pages.items()
                    if Path(p).is_file())
    return f'<ul id="stage-pages">{items}</ul>'


def _number(v: str):
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v else f


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def screenshot(html: str | Path, png: str | Path, width: int = 1280, height: int = 1600,
               timeout: float = 120.0) -> Path:
    """A PNG of ``html`` as headless Chromium draws it (Debian's ``chromium`` package)."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={png}", Path(html).resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-500:]}")
    return png
