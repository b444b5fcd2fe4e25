"""A YAML mapping read into a dataclass: the one validator of a run config's sections, a
scaling study's and a machine profile's keys.

Unknown keys, missing keys and values of the wrong type are each a ValueError of one
sentence naming the key as `where.key` and the value; the dataclass's own `__post_init__`
then checks what the values mean. Each reader wraps the ValueError in its own error class
(ConfigError, StudyError, ProfileError).
"""

from __future__ import annotations

import dataclasses
from typing import Any


class FieldError(ValueError):
    """One field of a shared dataclass breaks its rule. `field` is the field's name, so a reader
    can name the key its own file spells it with; the sentence reads `<field> <rule>`."""

    def __init__(self, field: str, rule: str):
        super().__init__(f"{field} {rule}")
        self.field, self.rule = field, rule


def key_name(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def reject_unknown(mapping: dict, known: tuple[str, ...], where: str = "") -> None:
    for key in mapping:
        if key not in known:
            raise ValueError(f"unknown key {key_name(where, key)!r}; valid keys here are {', '.join(known)}")


def require(mapping: dict, keys: tuple[str, ...], where: str = "") -> None:
    missing = [key_name(where, key) for key in keys if key not in mapping]
    if missing:
        raise ValueError(f"missing required key(s) {', '.join(missing)}")


def required_fields(cls) -> tuple[str, ...]:
    """The fields of dataclass `cls` without a default."""
    return tuple(f.name for f in dataclasses.fields(cls)
                 if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def integer(value: Any, key: str, least: int = 1) -> int:
    """`value` if it is an integer of at least `least` (0 or 1; YAML's true and false are not integers)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{key} must be a {'positive' if least == 1 else 'non-negative'} integer, got {value!r}")
    return value


def section_values(cls, mapping: dict, where: str) -> dict[str, Any]:
    """The keyword arguments of dataclass `cls` from a YAML mapping, each of its field's type."""
    if not isinstance(mapping, dict):
        raise ValueError(f"{where} must be a mapping, got {mapping!r}")
    fields_by_name = {f.name: f for f in dataclasses.fields(cls)}
    reject_unknown(mapping, tuple(fields_by_name), where)
    require(mapping, required_fields(cls), where)
    return {name: coerce(value, fields_by_name[name], key_name(where, name)) for name, value in mapping.items()}


def build_section(cls, mapping: dict, where: str):
    """An instance of dataclass `cls` from a YAML mapping (see `section_values`)."""
    return cls(**section_values(cls, mapping, where))


def coerce(value: Any, f: dataclasses.Field, key: str) -> Any:
    """`value` as field `f`'s type (int, float, bool, str, tuple[int, ...], a pair of numbers)."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number, got {value!r}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, got {value!r}")
        return value
    if kind == "tuple[int, ...]":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
            raise ValueError(f"{key} must be a list of integers, got {value!r}")
        return tuple(value)
    if kind.startswith("tuple"):
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{key} must be a list of two numbers, got {value!r}")
        return tuple(float(v) for v in value)
    return value
