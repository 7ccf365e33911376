"""One configuration path: params.yaml -> papermill parameters -> typed config objects -> the code.

- ``loader.py``: reading, merging a profile, the strict dict -> dataclass conversion, :class:`Params`, and
  :func:`parse` of the sections a stage declares (re-exported here);
- ``<section>.py``: one schema per params.yaml section (``data``, ``text_encoder``, ``teacher``, ``features``,
  ``add``, ``consistency``, ``evaluators``, ``evaluate``, ``preference``, ``ablations``);
- ``checks.py``: the checks across sections and the whole file (the ``check`` stage);
- ``__main__.py``: ``python -m addlib.config merge|check``.

This file imports the loader only, so importing the package does not import every section: a stage's code
(and so its dvc.yaml deps) holds just the sections it reads.
"""
from .loader import (BUDGET, ConfigError, Params, SECTIONS, ablation_params, apply_profile, check,  # noqa: F401
                     deep_merge, fingerprint, from_dict, load_raw, parse, parse_run, read_yaml, schema, table1_add,
                     to_dict, write_resolved)
