"""The student's training as the add stage runs it, shared with every ablation run (which trains its variant
through exactly this path): what it reads (the prepared data, the caption cache with the sample and NFSD
prompts, the teacher), the discriminator on F, and distillation.train_add."""
from __future__ import annotations

from pathlib import Path

from .. import config as C
from .. import data as D
from ..distillation import build_discriminator, train_add
from ..latent import Teacher, load_teacher
from ..paths import MODELS
from ..text import TextCache
from .common import load_prepared

# The params sections a student depends on: written beside it (its addlib_config.json, config.json).
RESOLVED = ("seed", "data", "text_encoder", "teacher", "features", "add")


def student_inputs(p: C.Params, root: Path = Path(".")) -> tuple[D.Dataset, TextCache, Teacher]:
    """The prepared data, the caption cache extended with the sample grid's and NFSD's prompts, the teacher."""
    ds, cache = load_prepared(root)
    cache = cache.extended(p.add.sample_prompts + [p.add.nfsd_negative_prompt], p.text_encoder)
    return ds, cache, load_teacher(p.teacher, root / MODELS / "teacher")


def train_student(p: C.Params, ds: D.Dataset, cache: TextCache, teacher: Teacher, features_dir: Path,
                  model_dir: Path, checkpoint_dir: Path, progress: bool = True, **kwargs) -> dict:
    """ADD with ``p``'s seed: the discriminator on F (its weights in ``features_dir``), train_add on the training
    split; ``kwargs`` go to train_add (live_dir, grid_dir). A checkpoint resumes only under the same F."""
    disc = build_discriminator(p.features, p.add.discriminator, ds.images.shape[1], cache.pooled.shape[1],
                               features_dir, p.seed)
    return train_add(p.add, teacher, p.seed, ds.subset(D.TRAIN), cache, disc,
                     int(cache.rows([p.add.nfsd_negative_prompt])[0]), model_dir, checkpoint_dir,
                     progress=progress, fingerprint_extra=[C.to_dict(p.features)], **kwargs)
