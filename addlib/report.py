"""The HTML report: executed notebooks rendered without their code, and a headless-browser screenshot to check
that a page renders. Not yet wired into the pipeline (the ``report`` stage comes with the ablation stages).

Pages are self-contained: figures shown with ``IPython.display.Image`` are stored in the notebook as base64
PNG and nbconvert inlines them, so ``reports/html/index.html`` opens from disk with nothing beside it.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

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
