"""The metrics' names, the tables' columns, their headers and display precision: the one source Table 2
(evaluation.py, the evaluate stage), Table 1 (ablations.py, the ablation stages), the calibration table and the
report read. Imports nothing."""

ROW = ("model", "sampler", "steps", "nfe", "guidance")                 # what a row of Table 2 is
SPEED = ("seconds_per_image", "images_per_second")
QUALITY = ("fid", "precision", "recall", "fid_detail", "precision_detail", "recall_detail", "clip_score",
           "prompt_accuracy")                                          # what the scorer returns for a set of images
TABLE2 = ROW + SPEED + QUALITY                                         # comparison.csv's columns, in order
TABLE1 = ("fid", "precision", "recall", "fid_detail", "recall_detail", "clip_score", "prompt_accuracy")
COSTS = ("trainable_parameters", "trained_state_mib", "peak_memory_mib", "seconds_per_step")  # an ablation run's

HEADERS = {"nfe": "NFE", "seconds_per_image": "s / image (batch 1)", "images_per_second": "images / s (large batch)",
           "fid": "FID", "fid_detail": "FID (detail)", "precision_detail": "precision (detail)",
           "recall_detail": "recall (detail)", "clip_score": "CLIP score", "prompt_accuracy": "prompt accuracy",
           "trainable_parameters": "trainable parameters", "trained_state_mib": "trained state (MiB)",
           "peak_memory_mib": "peak memory (MiB)", "seconds_per_step": "s / step"}

TABLE2_DIGITS = {"seconds_per_image": 4, "images_per_second": 1, "fid": 3, "fid_detail": 3, "clip_score": 2,
                 "guidance": 1}                                        # the rest: 3 significant digits
TABLE1_DIGITS = {"fid": 2, "precision": 3, "recall": 3, "fid_detail": 2, "recall_detail": 3, "clip_score": 2,
                 "prompt_accuracy": 3, "trained_state_mib": 1, "peak_memory_mib": 0, "seconds_per_step": 3}


def header(column: str) -> str:
    """A column's header in the tables (``fid_detail`` -> ``FID (detail)``)."""
    return HEADERS.get(column, column.replace("_", " "))
