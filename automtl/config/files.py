"""Reading search-space files: the YAML 1.2 dialect, ``--set`` overrides, paths relative to the file, and
validation errors as one line per problem (field, what is wrong, the value given)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic
import yaml

from automtl.config.schema import SearchConfig
from automtl.errors import UserError


class Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false; so ``off: 2`` and ``on``/``yes``/``no`` stay strings."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list(_first)
    )


def read_yaml(text: str):
    """Parse YAML with the 1.2 boolean rule above."""
    return yaml.load(text, Loader=Loader)


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        if not isinstance(node.setdefault(key, {}), dict):
            raise UserError(f"--set {dotted}: {key!r} is not a section")
        node = node[key]
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` with the value read as YAML (numbers, lists, null, …)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects KEY=VALUE (e.g. fine_tune.epochs=2), got {text!r}")
    try:
        return key.strip(), read_yaml(value)
    except yaml.YAMLError as exc:
        raise UserError(f"--set {key}: value {value!r} is not valid YAML ({exc})") from None


def describe(exc: pydantic.ValidationError) -> str:
    """One line per problem: the field path, what is wrong, the value given."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"] if "[" not in str(p) and not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "is not a known field"
        lines.append(f"{field or '(top level)'}: {msg} (got {err.get('input')!r})")
    return "invalid search space:\n  " + "\n  ".join(dict.fromkeys(lines))


def validate(raw: Any) -> SearchConfig:
    if not isinstance(raw, dict):
        raise UserError(f"a search space must be a YAML mapping, got {type(raw).__name__}")
    try:
        return SearchConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise UserError(describe(exc)) from None


def load(path: str | Path, overrides: list[str] = ()) -> SearchConfig:
    """Read, override and validate a search-space file."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text())
    except FileNotFoundError:
        raise UserError(f"search space {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read search space {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"search space {path} is not valid YAML: {exc}") from None
    return _from_raw({} if raw is None else raw, overrides, path.stem, path.parent)


def coerce(source: SearchConfig | Mapping[str, Any] | str | Path, overrides: list[str] = ()) -> SearchConfig:
    """A validated config from a :class:`SearchConfig`, a mapping shaped like a search-space file (name
    defaults to ``search``, ``pythonpath`` relative to the working directory) or a file's path."""
    if isinstance(source, SearchConfig):
        return _from_raw(source.model_dump(mode="json"), overrides, source.name, Path.cwd()) if overrides else source
    if isinstance(source, Mapping):
        return _from_raw(copy.deepcopy(dict(source)), overrides, "search", Path.cwd())
    if isinstance(source, (str, Path)):
        return load(source, overrides)
    raise UserError(f"a search config is a SearchConfig, a mapping or a search-space path, got {type(source).__name__}")


def _from_raw(raw: Any, overrides: list[str], name: str, base: Path) -> SearchConfig:
    if isinstance(raw, dict):
        raw.setdefault("name", name)
        for text in overrides:
            _set(raw, *parse_override(text))
        problem, dense = raw.get("problem"), raw.get("dense")
        if isinstance(problem, dict) and isinstance(problem.get("pythonpath"), list):
            problem["pythonpath"] = [str((base / str(p)).resolve()) for p in problem["pythonpath"]]
        if isinstance(dense, dict) and isinstance(dense.get("weights"), str):
            dense["weights"] = str((base / Path(dense["weights"]).expanduser()).resolve())
    return validate(raw)
