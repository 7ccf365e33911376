"""``python -m addlib.config merge params.yaml profiles/smoke.yaml -o params.yaml`` applies a profile (several:
each merged over the result of the ones before, e.g. ``profiles/paper.yaml profiles/sd-gpu.yaml``);
``python -m addlib.config check [params.yaml]`` checks a whole params file (exit 2 with one line on error)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from .checks import load, parse
from .loader import ConfigError, apply_profile, load_raw, read_yaml


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m addlib.config")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="deep-merge profiles, in order, over a params file and write the result")
    m.add_argument("params")
    m.add_argument("profile", nargs="+")
    m.add_argument("-o", "--output", required=True)
    c = sub.add_parser("check", help="validate a params file (exit 2 with one line on error)")
    c.add_argument("params", nargs="?", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "merge":
            raw = load_raw(args.params)
            for profile in args.profile:
                raw = apply_profile(raw, read_yaml(profile))
            parse(raw, Path(args.params).name)
            Path(args.output).write_text(yaml.safe_dump(raw, sort_keys=False))
        else:
            load(args.params)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
