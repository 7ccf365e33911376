"""The pipeline's stage bodies, one module per DVC stage (dvc.yaml), each a ``run(p, root)`` taking the typed
params (config.Params, restricted by ``stages.stage_params`` to the sections the stage declares):

prepare, teacher, features, add, evaluators, evaluate, ablation (one Table 1 row), diagnose, report.
scoring.py is what evaluate, ablation and diagnose share (the metrics' networks and reference features),
common.py what every stage reads (the prepared data). Each module imports only the library code its stage
runs, and dvc.yaml lists exactly that code as the stage's dependencies (tests/test_stage_deps.py checks it), so
an edit reruns only the stages that run the edited code.
"""
