"""Checks of options a user writes by hand (a YAML config, ``--dataset-options``) against the
names and annotated types of what receives them, so that a typo or a value of the wrong type
is a one-line ``ValueError`` naming the option instead of a ``TypeError`` deep inside.

No gainet imports: the data layer and the training config both use it.
"""

from __future__ import annotations

import collections.abc
import inspect
import os
import types
import typing
from pathlib import PurePath
from typing import Any, Literal

_SKIPPED_KINDS = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)


def keyword_types(cls: type, exclude: typing.Iterable[str] = ()) -> dict[str, Any]:
    """``{name: annotation}`` of the keyword arguments ``cls(...)`` accepts, following
    ``**kwargs`` that are passed on to base classes' ``__init__``."""
    accepted: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        hints = typing.get_type_hints(init)
        for name, parameter in inspect.signature(init).parameters.items():
            if name != "self" and parameter.kind not in _SKIPPED_KINDS:
                accepted[name] = hints.get(name, Any)
    for name in exclude:
        accepted.pop(name, None)
    return accepted


def check_options(values: dict[str, Any], accepted: dict[str, Any], what: str) -> dict[str, Any]:
    """``values`` with each name checked against ``accepted`` (``{name: annotation}``) and each
    value against its annotation; returns a copy with numbers written as text (YAML reads
    ``1e-3`` as a string) turned into floats where a float is expected.

    Raises:
        ValueError: one line, ``unknown <what> 'name'; valid: ...`` or
            ``<what> name=value must be <type>``.
    """
    unknown = sorted(set(values) - set(accepted))
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; valid: {', '.join(sorted(accepted))}")
    checked = {}
    for name, value in values.items():
        annotation = accepted[name]
        if isinstance(value, str) and _accepts_float(annotation) and not _fits(value, annotation):
            try:
                value = float(value)
            except ValueError:
                pass
        if not _fits(value, annotation):
            raise ValueError(f"{what} {name}={value!r} must be {_describe(annotation)}")
        checked[name] = value
    return checked


def _args(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation)


def _is_union(annotation: Any) -> bool:
    return isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union


def _accepts_float(annotation: Any) -> bool:
    return annotation is float or (_is_union(annotation) and float in _args(annotation))


def _fits(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is acceptable for ``annotation`` (unknown annotation forms accept anything)."""
    if annotation is Any:
        return True
    if _is_union(annotation):
        return any(_fits(value, option) for option in _args(annotation))
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, PurePath)):
        return isinstance(value, (str, os.PathLike))
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in _args(annotation)
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    if annotation in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        args = _args(annotation)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return not args or all(_fits(v, args[0]) for v in value)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _describe(annotation: Any) -> str:
    if _is_union(annotation):
        return " or ".join(dict.fromkeys(_describe(a) for a in _args(annotation)))
    if annotation is type(None) or annotation is None:
        return "null"
    if annotation is float:
        return "a number"
    if annotation is int:
        return "an integer"
    if annotation is bool:
        return "true or false"
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, PurePath)):
        return "text"
    origin, args = typing.get_origin(annotation), _args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if annotation is dict or origin is dict:
        return "a mapping"
    if origin is tuple and args and args[-1] is not Ellipsis:
        return "a list [" + ", ".join(_describe(a) for a in args) + "]"
    if annotation in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        return f"a list of {_describe(args[0])}" if args else "a list"
    return getattr(annotation, "__name__", str(annotation))
