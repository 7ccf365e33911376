"""Stage check: the first stage, on which every other depends. The runner has already validated the whole of
params.yaml and every input it names that exists before the pipeline runs (the image folder and each line of
its metadata, the text encoder, a pretrained teacher and its schedule, F's weights, Inception and CLIP); a bad
value stops ``dvc repro`` here, before DVC removes any other stage's outputs. The stamp it writes never changes,
so a valid edit of params.yaml reruns only the stages whose params changed."""
from __future__ import annotations

from pathlib import Path

from .. import config as C
from ..paths import REPORTS, write_json


def run(p: C.Params, root: Path = Path("."), progress: bool = True) -> dict:
    stamp = {"params.yaml": "valid", "checked": ["params", "data", "text_encoder", "teacher", "features", "evaluate"]}
    write_json(root / REPORTS / "check.json", stamp)
    return stamp
