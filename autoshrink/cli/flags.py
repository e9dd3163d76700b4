"""Command-line flags generated from a config dataclass, and the config read back from them, so
each default and its help is written once, in the config (SearchConfig, TrainConfig)."""

from __future__ import annotations

import argparse
import dataclasses


def _type_of(field: dataclasses.Field):
    """int, float or str from a config field's annotation (a string under postponed annotations)."""
    kind = str(field.type).split("|")[0].strip()
    return {"int": int, "float": float}.get(kind, str)


def add_config_flags(
    parser: argparse.ArgumentParser, config_cls, skip: tuple[str, ...] = (), optional: tuple[str, ...] = ()
) -> None:
    """One flag per field of a config dataclass: --field-name, its help and default from the field;
    a boolean is a pair --field-name / --no-field-name (with no default when the field's default is
    None: not given, the config decides, e.g. from a resumed run). Fields in `optional` are not
    required even where the config requires them (the command decides what their absence means)."""
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        required = f.default is dataclasses.MISSING and f.name not in optional
        if f.default is None and str(f.type).startswith("bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        if isinstance(f.default, bool):
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=f.default,
                help=f"{help_text} [{'on' if f.default else 'off'}]",
            )
            continue
        parser.add_argument(
            flag,
            dest=f.name,
            type=_type_of(f),
            required=required,
            choices=f.metadata.get("choices"),
            default=None if f.default is dataclasses.MISSING else f.default,
            help=help_text,
        )


def config_from(args: argparse.Namespace, config_cls):
    """The config whose fields the parsed flags give."""
    return config_cls(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if hasattr(args, f.name)}
    )
