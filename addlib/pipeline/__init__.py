"""The pipeline's stage bodies, one module per DVC stage (dvc.yaml), each a ``run(p, root)`` taking the typed
params holding the sections the stage declares (``stages.stage_params``); scoring.py and common.py are what
several stages share. The layout and what each stage writes: docs/pipeline.md.
"""
