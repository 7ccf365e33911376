"""Stage prepare: load the images, split, caption, encode every distinct caption once; the data card."""
from __future__ import annotations

from pathlib import Path

from .. import config as C
from .. import data as D
from .. import plots
from ..paths import DATA_DIR, REPORTS, code_version, write_json
from ..text import TextEncoder, encode_captions
from .common import sections


def run(p: C.Params, root: Path = Path("."), progress: bool = True) -> dict:
    ds = D.load_source(p.data, root)
    ds.save(root / DATA_DIR)
    encoder = TextEncoder.from_config(p.text_encoder)
    cache = encode_captions(encoder, ds.captions)
    cache.save(root / DATA_DIR)
    card = D.data_card(ds, p.data, len(cache.captions) - 1)
    card["text_encoder"] = {"path": p.text_encoder.path, "dim": encoder.dim, "max_length": p.text_encoder.max_length}
    out = root / REPORTS / "data"
    write_json(out / "card.json", card)
    images, captions = D.example_grid(ds, seed=p.seed)
    plots.image_grid(images, out / "examples.png", cell_labels=captions, cell_inches=1.0,
                     title=f"{p.data.source}: training images and their captions")
    C.write_resolved(sections(p, "seed", "data", "text_encoder"), out / "config.json", code_version=code_version(root))
    return card
