"""Reading a TOML configuration file that a service ships and an operator may replace (the
router's rules, the responder's catalog), with errors that name the file."""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from typing import Any


class TomlFileError(ValueError):
    """The file cannot be read or is not TOML; the message starts with the file's path."""


def read_toml(
    path: str | os.PathLike[str] | None, *, package: str, packaged: str, what: str
) -> tuple[str, dict[str, Any]]:
    """(source, document) of `path`, or of the file `packaged` inside `package` when None.

    `what` names the file in errors, e.g. "rules file".
    """
    if path is None:
        resource = resources.files(package).joinpath(packaged)
        source = str(resource)
        try:
            raw = resource.read_bytes()
        except OSError as exc:
            raise TomlFileError(f"{source}: cannot read the packaged {what}: {exc}") from exc
    else:
        source = os.fspath(path)
        try:
            with open(source, "rb") as file:
                raw = file.read()
        except FileNotFoundError as exc:
            raise TomlFileError(f"{source}: {what} not found") from exc
        except OSError as exc:
            raise TomlFileError(f"{source}: cannot read {what}: {exc.strerror or exc}") from exc
    try:
        return source, tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TomlFileError(f"{source}: not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TomlFileError(f"{source}: not valid TOML: {exc}") from exc


def describe_type(value: object) -> str:
    """How an error message names a TOML value's type ("an integer", "a table")."""
    if value is None:
        return "nothing"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)
