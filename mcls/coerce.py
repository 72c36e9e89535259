"""A config value as its field's type: what YAML and `key=value` give (strings, ints, lists) checked and converted
for the typed Config (mcls.config), with one short reason when it cannot be."""
from __future__ import annotations

import types
import typing
from typing import Any


def coerce(value: Any, hint: Any) -> Any:
    """`value` as read from YAML or `key=value`, as the field type `hint` wants it; TypeError with what was
    expected otherwise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return coerce(value, args[0])
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list of {item_type.__name__}")
        return [coerce(v, item_type) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("expected true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("expected an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                raise TypeError("expected a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("expected a number")
        return float(value)
    if hint is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise TypeError("expected a string")
        return value
    return value
