"""argparse flags made from an option dataclass, so a command never restates a default or a help.

One dataclass per option set (:class:`~ra3d.export.options.ExportOptions`,
:class:`~ra3d.augmentation.adaptation.AdaptationConfig`, the user-mesh fields of
:class:`~ra3d.augmentation.assets.RetrievalConfig`) is what a YAML section, ``ra3d fit``'s
``--model.<section>.help`` (jsonargparse) and a command's flags all come from:

* the **default** is the field's default;
* the **help** is the field's entry in the class docstring's ``Args:``/``Attributes:`` section —
  the text jsonargparse shows for the YAML keys, read here with the same parser
  (``docstring_parser``) — unless ``metadata["help"]`` gives CLI wording (e.g. for ``--no-x``);
* the **type** comes from the annotation: ``int``/``float``/``str``/``Path``, ``X | None`` (the
  flag also takes ``none``), ``list[X]``/``Sequence[X]``/``tuple[X, ...]`` (``nargs="+"``) and
  ``bool`` (a default-True field becomes ``--no-<name>``, a default-False one ``--<name>``);
* ``dataclasses.field(metadata=...)`` holds only what is particular to the command line:
  ``flag`` (the flag when it is not ``--<name-with-dashes>``, e.g. ``--format`` for ``formats``),
  ``choices``, ``metavar`` and ``help``.

Light on purpose (no torch): ``ra3d export --help`` builds its parser with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_SCALARS: dict[Any, Callable[[str], Any]] = {int: int, float: float, str: str, Path: Path}
_SEQUENCES = (list, tuple, Sequence)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: description}`` from the ``Args:``/``Attributes:`` section of ``cls``'s docstring
    (and its bases'), as jsonargparse reads it, with reST markup reduced to plain text."""
    import docstring_parser

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not klass.__doc__:
            continue
        for param in docstring_parser.parse(klass.__doc__).params:
            if param.description:
                docs[param.arg_name] = _plain(param.description)
    return docs


def _plain(text: str) -> str:
    """``:class:`~a.b.C``` → ``C``, ````x```` → ``x``, one line."""
    text = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", text)
    text = text.replace("``", "")
    return " ".join(text.split())


def flag_for(cls: type, name: str) -> str:
    """The command-line flag of field ``name`` of ``cls`` (what error messages should name)."""
    f = _field(cls, name)
    if "flag" in f.metadata:
        return str(f.metadata["flag"])
    dashed = name.replace("_", "-")
    if _hint(cls, name) is bool and _default(f) is True:
        return f"--no-{dashed}"
    return f"--{dashed}"


def flags_for(cls: type, names: Iterable[str]) -> dict[str, str]:
    """``{field: flag}`` for ``names`` (e.g. to name flags, not YAML keys, in a shared check)."""
    return {name: flag_for(cls, name) for name in names}


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, str]:
    """Add one flag per field of the dataclass ``cls`` (those in ``include`` when given, in that
    order, minus ``exclude``) and return ``{field: flag}``.

    Values land under a per-class destination, so two dataclasses may share field names (and a
    command's own flags cannot collide with them); read them back with :func:`dataclass_from_args`.
    Raises TypeError for a field whose annotation has no flag form and ValueError for a field
    documented nowhere (every flag gets a help).
    """
    known = {f.name: f for f in dataclasses.fields(cls)}
    names = list(include) if include is not None else list(known)
    unknown = [n for n in [*names, *exclude] if n not in known]
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}")
    added: dict[str, str] = {}
    for name in names:
        if name in exclude:
            continue
        f, flag = known[name], flag_for(cls, name)
        kwargs = _argument(cls, f)
        parser.add_argument(flag, dest=_dest(cls, name), **kwargs)
        added[name] = flag
    return added


def dataclass_from_args(cls: type[T], namespace: argparse.Namespace, **overrides: Any) -> T:
    """An instance of ``cls`` from the flags :func:`add_dataclass_arguments` added (fields
    without a flag keep their defaults; ``overrides`` win). A list given to a tuple-default field
    becomes a tuple, as the dataclass declares it."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        dest = _dest(cls, f.name)
        if not f.init or not hasattr(namespace, dest):
            continue
        value = getattr(namespace, dest)
        if isinstance(value, list) and isinstance(_default(f), tuple):
            value = tuple(value)
        kwargs[f.name] = value
    kwargs.update(overrides)
    return cls(**kwargs)


# ------------------------------------------------------------------------------ internals
def _dest(cls: type, name: str) -> str:
    return f"{cls.__module__}.{cls.__qualname__}.{name}"


def _field(cls: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise ValueError(f"{cls.__name__} has no field {name!r}")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name!r} has no default; a flag needs one")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _hint(cls: type, name: str) -> Any:
    return _hints(cls)[name]


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` → ``(X, True)``; ``X`` → ``(X, False)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"a flag needs one type, got the union {hint}")
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def _or_none(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names it in its errors
    return parse


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def _argument(cls: type, f: dataclasses.Field) -> dict[str, Any]:
    """argparse keyword arguments for field ``f`` (see the module docstring)."""
    meta = f.metadata
    default = _default(f)
    text = meta.get("help") or field_docs(cls).get(f.name)
    if not text:
        raise ValueError(
            f"{cls.__name__}.{f.name} has no help: document it in the class docstring's Args "
            "section (or give metadata['help'])"
        )
    hint, optional = _split_optional(_hint(cls, f.name))
    kwargs: dict[str, Any] = {"default": default}
    if hint is bool and not optional:
        kwargs["action"] = "store_false" if default is True else "store_true"
        kwargs["help"] = text.replace("%", "%%")
        return kwargs
    many = typing.get_origin(hint) in _SEQUENCES or hint in _SEQUENCES
    if many:  # an optional list is None by leaving the flag out, so its items are never "none"
        items = [a for a in typing.get_args(hint) if a is not Ellipsis]
        hint = items[0] if items else str
        kwargs["nargs"] = "+"
    convert = _SCALARS.get(hint)
    if convert is None:
        raise TypeError(f"{cls.__name__}.{f.name}: no flag form for the type {hint!r}")
    kwargs["type"] = _or_none(convert) if optional and not many else convert
    if "choices" in meta:
        kwargs["choices"] = tuple(meta["choices"])
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    elif "choices" not in meta:  # as argparse names a flag's value: after the flag, not the field
        kwargs["metavar"] = flag_for(cls, f.name).lstrip("-").replace("-", "_").upper()
    if default is not None:
        text = f"{text.rstrip('.')} (default: {_show(default)})"
    kwargs["help"] = text.replace("%", "%%")
    return kwargs


__all__ = [
    "add_dataclass_arguments",
    "dataclass_from_args",
    "field_docs",
    "flag_for",
    "flags_for",
]
