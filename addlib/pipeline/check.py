"""Stage check: the first stage, on which every other depends. Before the pipeline runs, the runner calls
:func:`check_all`: the whole of params.yaml (every section, the rules across sections, every ablation run's
params) and every input it names that exists (the image folder and each line of its metadata, the text
encoder, a pretrained teacher and its schedule, F's weights, Inception and CLIP). A bad value stops
``dvc repro`` here, before DVC removes any other stage's outputs; each later stage parses only its own
sections. The stamp it writes never changes, so a valid edit of params.yaml reruns only the stages whose
params changed."""
from __future__ import annotations

from pathlib import Path

from .. import config as C
from ..config import checks
from ..paths import REPORTS, write_json
from ..stages import stage_sections


def check_all(raw: dict, where: str, root: Path) -> C.Params:
    p = checks.parse(raw, where)
    checks.check_inputs(p, root)
    read = set(stage_sections("ablation", root)) | {"add"}  # a run's add changes Table 1's (ablations.add)
    for name, run in p.ablations.runs.items():  # an override of a section the ablation stage does not read
        unread = sorted(set(run.overrides) - read)  # would be dropped silently
        C.check(not unread, f"{where}.ablations.runs.{name}.overrides", f"sets {', '.join(unread)}, which the "
                f"ablation stage does not read (its params in dvc.yaml: {', '.join(sorted(read))})")
    return p


def run(p: C.Params, root: Path = Path("."), progress: bool = True) -> dict:
    stamp = {"params.yaml": "valid", "checked": ["params", "data", "text_encoder", "teacher", "features", "evaluate"]}
    write_json(root / REPORTS / "check.json", stamp)
    return stamp
