"""The loader: params.yaml (with a profile deep-merged over it) -> typed config objects, one section at a time.

params.yaml is the single place where the run's values live; the section modules beside this one
(``addlib/config/<section>.py``) only declare each section's *shape* (names, types, allowed ranges). Every
field is required, so there is no second set of defaults that could drift from params.yaml. (One copy is there
by design: Table 1's ADD settings, ``ablations.add``, so that an experiment on the main run's ``add`` does not
rerun Table 1; the report names any key where the two differ.) A profile (e.g. ``profiles/smoke.yaml``) is a
partial params file deep-merged over params.yaml (:func:`apply_profile`: its ``add`` over ``ablations.add``
too); it changes values, never the code path.

A stage parses only the sections it declares in dvc.yaml (:func:`parse` with ``sections``), importing only
those sections' modules, so a new knob in one section reruns only the stages that read it. The checks across
sections and the whole file live in ``checks.py`` (the ``check`` stage runs them before any other stage).
Unknown or mistyped keys, wrong types and out-of-range values raise :class:`ConfigError` with a one-line
message that names the key, before any compute.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import math
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import yaml

if TYPE_CHECKING:
    from .ablations import AblationsConfig
    from .add import ADDConfig
    from .consistency import ConsistencyConfig
    from .data import DataConfig
    from .evaluate import EvaluateConfig
    from .evaluators import EvaluatorsConfig
    from .features import FeatureNetConfig
    from .preference import PreferenceConfig
    from .teacher import TeacherConfig
    from .text_encoder import TextEncoderConfig


class ConfigError(ValueError):
    """A bad value in params.yaml (or a profile); the message is one line and names the key."""


# --------------------------------------------------------------------------------------------------
# Generic dict -> dataclass conversion with strict checking.


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/off (yes/on) as a boolean, and DVC's
            # `dvc exp run -S` rewrites params.yaml without the quotes: take the one choice spelled that way
            words = ("yes", "on", "true", "y") if value else ("no", "off", "false", "n")
            spelled = [a for a in args if isinstance(a, str) and a.lower() in words]
            value = spelled[0] if len(spelled) == 1 else value
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1] if args else Any, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML reads "1e-3" (no dot) as a string; accept numeric strings so users need not write 1.0e-3.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {_type_name(tp)} at {where}")


def from_dict(cls, data: Any, where: str):
    """Build dataclass ``cls`` from ``data``; reject unknown and missing keys; then run ``validate()``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}.{key}: unknown key{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is not dataclasses.MISSING:
                continue
            raise ConfigError(f"{where}.{f.name}: missing key")
        kwargs[f.name] = _convert(data[f.name], hints[f.name], f"{where}.{f.name}")
        if f.name == "seed" or f.name.endswith("_seed") or f.name == "seeds":  # torch takes seeds >= 0
            seeds = kwargs[f.name] if isinstance(kwargs[f.name], list) else [kwargs[f.name]]
            check(all(v >= 0 for v in seeds), f"{where}.{f.name}", f"seeds must be >= 0, got {kwargs[f.name]}")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(where)
    return obj


def check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


# --------------------------------------------------------------------------------------------------
# The whole file, section by section.

# params.yaml's top-level keys -> the schema class in addlib/config/<key>.py (``seed`` is a plain integer).
SECTIONS = {"seed": None, "data": "DataConfig", "text_encoder": "TextEncoderConfig", "teacher": "TeacherConfig",
            "features": "FeatureNetConfig", "add": "ADDConfig", "consistency": "ConsistencyConfig",
            "evaluators": "EvaluatorsConfig", "evaluate": "EvaluateConfig", "preference": "PreferenceConfig",
            "ablations": "AblationsConfig"}


@dataclasses.dataclass
class Params:
    """params.yaml, typed. A stage gets only the sections it declares in dvc.yaml; the others are None."""
    seed: Optional[int]
    data: Optional[DataConfig]
    text_encoder: Optional[TextEncoderConfig]
    teacher: Optional[TeacherConfig]
    features: Optional[FeatureNetConfig]
    add: Optional[ADDConfig]
    consistency: Optional[ConsistencyConfig]
    evaluators: Optional[EvaluatorsConfig]
    evaluate: Optional[EvaluateConfig]
    preference: Optional[PreferenceConfig]
    ablations: Optional[AblationsConfig]


def schema(section: str) -> type:
    """The dataclass of one params section (its module is imported only when a stage reads that section)."""
    return getattr(importlib.import_module(f"{__package__}.{section}"), SECTIONS[section])


def parse(raw: dict, where: str = "params", *, sections: list[str] | None = None) -> Params:
    """Typed params with the given ``sections`` parsed and checked (each on its own) and the others None; all of
    them when ``sections`` is None. Unknown top-level keys are refused either way. The checks across sections
    and of every ablation run are :func:`addlib.config.checks.parse`'s."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    for key in raw:
        if key not in SECTIONS:
            close = difflib.get_close_matches(str(key), list(SECTIONS), n=1)
            raise ConfigError(f"{where}.{key}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""))
    wanted = list(SECTIONS) if sections is None else list(sections)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        raise ValueError(f"no params section {unknown[0]!r} (sections: {', '.join(SECTIONS)})")
    values = {}
    for name in SECTIONS:
        if name not in wanted:
            values[name] = None
            continue
        if name not in raw:
            raise ConfigError(f"{where}.{name}: missing key")
        if name == "seed":
            values[name] = _convert(raw[name], int, f"{where}.seed")
            check(values[name] >= 0, f"{where}.seed", f"seeds must be >= 0, got {values[name]}")
        else:
            values[name] = from_dict(schema(name), raw[name], f"{where}.{name}")
    return Params(**values)


def parse_run(raw: dict, name: str, seed: int, where: str = "params", *, sections: list[str] | None = None) -> Params:
    """The typed params of one ablation run (:func:`ablation_params`), ``sections`` of it (default: the
    sections ``raw`` holds, so a stage's restricted params stay restricted)."""
    data = ablation_params(raw, name, seed)
    if sections is None:
        sections = [k for k in SECTIONS if data.get(k) is not None]
    elif "add" not in sections:  # built from ablations.add, which the stage declares instead of the main run's
        sections = [*sections, "add"]
    return parse({k: v for k, v in data.items() if v is not None}, f"{where}:ablations.runs.{name}.overrides",
                 sections=sections)


# --------------------------------------------------------------------------------------------------
# Merging, profiles and the resolved-config record.


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` with ``override`` merged in recursively (override wins; lists are replaced)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_raw(path: str | Path = "params.yaml", profile: str | Path | None = None) -> dict:
    """params.yaml as a dict, with a profile file applied over it if given (:func:`apply_profile`)."""
    raw = read_yaml(path)
    if profile is not None:
        raw = apply_profile(raw, read_yaml(profile))
    return raw


# add.train's keys that are the main run's budget: Table 1's runs take ablations.steps and ablations.batch_size
# instead, and draw no sample grids while training.
BUDGET = ("steps", "batch_size", "sample_every")


def table1_add(add: dict) -> dict:
    """An ``add`` section (or a profile's part of one) as Table 1's ADD settings, ``ablations.add``: the same
    without the main run's budget (:data:`BUDGET`)."""
    out = dict(add)
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k not in BUDGET}
    return out


def with_table1_budget(add: dict, steps: int, batch_size: int) -> dict:
    """Table 1's ADD settings with its budget in place of add.train's: ``steps`` x ``batch_size``, no grids."""
    return deep_merge(add, {"train": {"steps": steps, "batch_size": batch_size, "sample_every": 0}})


def apply_profile(raw: dict, profile: dict) -> dict:
    """``profile`` deep-merged over ``raw``. A profile changes the project's setting, so its ``add`` applies to
    Table 1's ADD settings (``ablations.add``) too, unless it sets ``ablations.add`` itself. (An experiment,
    ``dvc exp run -S add.<key>=...``, changes the main run's ``add`` only, and does not rerun Table 1.)"""
    if "add" in profile and "add" not in (profile.get("ablations") or {}):
        profile = deep_merge(profile, {"ablations": {"add": table1_add(profile["add"])}})
    return deep_merge(raw, profile)


def ablation_params(raw: dict, name: str, seed: int) -> dict:
    """The params of one ablation run: params.yaml with Table 1's ADD settings (``ablations.add``, never the
    main run's ``add``) as ``add``, the run's overrides, its seed and the ablation budget in place of
    add.train's steps and batch size (no sample grids during training)."""
    ab = raw["ablations"]
    out = deep_merge({**raw, "add": ab["add"]}, ab["runs"][name].get("overrides") or {})
    return {**out, "seed": seed, "add": with_table1_budget(out["add"], ab["steps"], ab["batch_size"])}


def to_dict(cfg) -> Any:
    """Dataclasses (possibly inside dicts) -> plain JSON-able dicts."""
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def write_resolved(cfg, path: str | Path, **extra) -> None:
    """Write the fully resolved config (plus e.g. the code version) as JSON beside a stage's outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"config": to_dict(cfg), **extra}
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def fingerprint(*objs) -> str:
    """A short stable hash of config objects / dicts (decides whether a checkpoint may be resumed)."""
    import hashlib

    payload = json.dumps([to_dict(o) for o in objs], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
