"""An imagefolder's metadata.jsonl, read and checked line by line: by the config before any compute
(``data.check_inputs``) and by the data loader (data.py) that reads the rows."""
from __future__ import annotations

import json
from pathlib import Path

from .config.loader import ConfigError


def read_metadata(folder: Path) -> list[dict]:
    """The rows of an imagefolder's metadata.jsonl, each checked: valid UTF-8 JSON with a ``file_name`` (a file
    inside the folder) and a ``text`` (a string), and an optional integer ``label`` >= 0. Any problem is a
    one-line ConfigError naming the file and line."""
    meta_path = folder / "metadata.jsonl"
    rows = []
    inside = folder.resolve()
    for n, raw in enumerate(meta_path.read_bytes().splitlines(), 1):
        at = f"{meta_path}:{n}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{at}: not UTF-8 (byte {e.start}); save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{at}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict) or "file_name" not in row or "text" not in row:
            raise ConfigError(f"{at}: needs an object with 'file_name' and 'text'")
        name, text, label = row["file_name"], row["text"], row.get("label", -1)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{at}: file_name must be a non-empty string, got {name!r}")
        if not isinstance(text, str):
            raise ConfigError(f"{at}: text must be a string (the caption), got {text!r}")
        if isinstance(label, bool) or not isinstance(label, int) or (label < 0 and "label" in row):
            raise ConfigError(f"{at}: label must be an integer >= 0 (the class index), got {label!r}")
        path = (folder / name).resolve()
        if Path(name).is_absolute() or inside not in path.parents:
            raise ConfigError(f"{at}: file_name {name!r} points outside the folder {folder}")
        if not path.is_file():
            raise ConfigError(f"{at}: image not found: {folder / name}")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{meta_path}: no entries")
    return rows
