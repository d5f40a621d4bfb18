"""A sweep grid: a small TOML file expanded into cells (one model converted with one recipe, evaluated on sets).

    [sweep]
    models = ["openai/whisper-tiny.en"]          # hub ids or local directories
    calib = "${LIBRISPEECH}/train-clean-100"     # calibration audio (recipes that use it)
    validation = "dev-clean"                     # the set recipes are chosen on; the others only report
    budgets = [4.3, 3.3]                         # bits/weight at which `wavq report` picks a recipe
    max_new_tokens = 200
    [sets]
    dev-clean = "${LIBRISPEECH}/dev-clean"       # LibriSpeech layout or any audio + *.trans.txt folder
    test-clean = { path = "${LIBRISPEECH}/test-clean", limit = 100 }
    [[recipes]]                                  # list values expand as a product; the label is a template
    label = "RTN {bits} g{group_size}"
    method = "rtn"
    bits = [8, 4]
    group_size = [128, 0]
    [[baselines]]                                # measured like the cells: transformers-f32, torch-int8,
    kind = "torch-int8"                          # ctranslate2-int8 (Whisper; the `ctranslate2` extra)

Recipe keys are wavq.converter.quant.recipe.Recipe's fields (`seed` draws the calibration audio). Paths are relative
to the grid file; ${VAR} is taken from the environment.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import re
import sys
from typing import Any

from .baselines import BASELINES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MAX_NEW_TOKENS = 200  # a broken model repeats itself to the limit; 200 tokens cover any LibriSpeech utterance
_VAR = re.compile(r"\$\{(\w+)\}")


class GridError(ValueError):
    """A grid file that cannot be expanded."""


@dataclasses.dataclass(frozen=True)
class EvalSet:
    name: str
    path: str
    limit: int | None = None  # the first N utterances by id


@dataclasses.dataclass(frozen=True)
class Cell:
    """One model with one recipe (or one baseline), evaluated on every set of the grid."""

    label: str
    model: str
    recipe: dict[str, Any] | None  # Recipe keyword arguments; None: float weights
    sets: tuple[EvalSet, ...]
    calib: str | None = None
    baseline: str | None = None  # one of BASELINES; None: a wavq cell
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    @property
    def conversion_key(self) -> str:
        """Hash of what the .wq file depends on: the source, the recipe and (when the recipe uses it) the
        calibration audio. A re-run reuses the cached file of an unchanged key."""
        spec = {"model": fingerprint(self.model), "recipe": self.recipe, "baseline": self.baseline}
        if self.recipe is not None and _uses_calibration(self.recipe):
            spec["calib"] = fingerprint(self.calib, mtimes=False) if self.calib else None
        return _digest(spec)

    @property
    def id(self) -> str:
        """Hash of everything the row depends on: the conversion and how it is evaluated."""
        sets = [(s.name, s.limit, fingerprint(s.path, mtimes=False)) for s in self.sets]
        return _digest({"conversion": self.conversion_key, "sets": sets, "max_new_tokens": self.max_new_tokens})


@dataclasses.dataclass(frozen=True)
class Grid:
    cells: tuple[Cell, ...]
    validation: str | None
    budgets: tuple[float, ...]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _uses_calibration(recipe: dict) -> bool:
    from wavq.converter.quant.recipe import Recipe

    return Recipe.from_options(**recipe).uses_calibration


@functools.cache  # a directory is walked once per process, not once per cell
def fingerprint(source: str | None, mtimes: bool = True) -> str | None:
    """What identifies a model or data source: a hub id as given; a local directory by its files' names and sizes,
    and with `mtimes` their modification times (a retrained checkpoint has the sizes of the old one; audio copied
    to another machine keeps its identity). Contents are not hashed: gigabytes per cell would cost more than it
    saves."""
    if source is None or not os.path.isdir(source):
        return source
    entries = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for fn in sorted(filenames):
            st = os.stat(os.path.join(dirpath, fn))
            entry = [os.path.relpath(os.path.join(dirpath, fn), source), st.st_size]
            entries.append(entry + [int(st.st_mtime)] if mtimes else entry)
    return _digest(entries)


def _path(value: str, base: str) -> str:
    def var(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise GridError(f"the grid uses ${{{m.group(1)}}}, which is not set in the environment")
        return os.environ[m.group(1)]

    value = _VAR.sub(var, value)
    if os.path.isabs(value):
        return value
    joined = os.path.normpath(os.path.join(base, value))
    if os.path.exists(joined) or value.startswith("."):
        return joined
    return value  # a hub id such as openai/whisper-tiny.en


def _expand(table: dict) -> list[dict]:
    """Every combination of the list-valued keys of one [[recipes]] table."""
    keys = sorted(table)
    values = [v if isinstance(v, list) else [v] for v in (table[k] for k in keys)]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _recipe_cells(table: dict, models: list[str], common: dict[str, Any]) -> list[Cell]:
    from wavq.converter.quant.recipe import Recipe

    fields = {f.name for f in dataclasses.fields(Recipe)}
    template = table.get("label")
    out = []
    for combo in _expand({k: v for k, v in table.items() if k != "label"}):
        unknown = sorted(set(combo) - fields - {"model"})
        if unknown:
            raise GridError(f"recipe keys {unknown} are not Recipe fields ({', '.join(sorted(fields))})")
        recipe = {k: v for k, v in combo.items() if k != "model"}
        float_weights = recipe.get("method", "rtn") == "none"
        try:
            label = (template or _default_label(recipe)).format(**recipe)
        except (KeyError, IndexError) as e:
            raise GridError(f"label template {template!r} names {e}, which the recipe does not set") from None
        for model in [combo["model"]] if "model" in combo else models:
            out.append(Cell(label, model, None if float_weights else recipe, **common))
    return out


def _default_label(recipe: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in recipe.items())


def load_grid(path: str | os.PathLike) -> Grid:
    """Parse and expand a grid file; every recipe is validated here, before any cell runs."""
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise GridError(f"{path}: {e}") from None
    sweep = doc.get("sweep", {})
    models = [_path(m, base) for m in sweep.get("models", [])]
    if not models:
        raise GridError(f"{path}: [sweep] models is empty")
    sets = []
    for name, spec in doc.get("sets", {}).items():
        spec = spec if isinstance(spec, dict) else {"path": spec}
        sets.append(EvalSet(name, _path(spec["path"], base), spec.get("limit")))
    if not sets:
        raise GridError(f"{path}: no [sets]")
    validation = sweep.get("validation")
    if validation is not None and validation not in {s.name for s in sets}:
        raise GridError(f"{path}: validation set {validation!r} is not one of the [sets]")
    common: dict[str, Any] = dict(
        sets=tuple(sets),
        calib=_path(sweep["calib"], base) if sweep.get("calib") else None,
        max_new_tokens=int(sweep.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
    )
    cells: list[Cell] = []
    for table in doc.get("recipes", []):
        cells += _recipe_cells(table, models, common)
    for table in doc.get("baselines", []):
        kind = table.get("kind")
        if kind not in BASELINES:
            raise GridError(f"{path}: baseline kind {kind!r}: use one of {', '.join(BASELINES)}")
        cells += [Cell(table.get("label", kind), m, None, baseline=kind, **common) for m in models]
    for cell in cells:
        if cell.recipe is not None:
            from wavq.converter.quant.recipe import Recipe

            try:
                Recipe.from_options(**cell.recipe)
            except (ValueError, TypeError) as e:
                raise GridError(f"{path}: recipe {cell.label!r}: {e}") from None
    ids = [(c.model, c.label) for c in cells]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise GridError(f"{path}: two cells share the label {dup[0][1]!r} for {dup[0][0]}")
    return Grid(tuple(cells), validation, tuple(float(b) for b in sweep.get("budgets", [])))
