"""A user's mistake on the command line, as one message that names the config key or file and the fix."""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from typing import Any

import jsonargparse
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from imagenette_sota.data.dataset import BadImageError
from imagenette_sota.data.download import BadArchiveError, ChecksumError, UnreachableError, UnsafeArchiveError
from imagenette_sota.module import CheckpointMismatchError

# Only a refusal raised by this package's own ``raise`` statements (or jsonargparse's) is a setting's error: an
# error from deep inside a fit keeps its traceback, whatever its message happens to quote.
REFUSERS = (str(Path(__file__).resolve().parent), str(Path(jsonargparse.__file__).resolve().parent))
SETTING_ERRORS = (ValueError, TypeError, KeyError, OSError, MisconfigurationException)
# Errors about the user's files and downloads whose message names the file or URL and the fix itself: printed as
# they are (in the CLI's spelling), wherever they were raised (a DataLoader worker too).
FILE_ERRORS = (
    BadImageError,
    ChecksumError,
    BadArchiveError,
    UnsafeArchiveError,
    UnreachableError,
    CheckpointMismatchError,
)


class ConfigurationError(Exception):
    """A setting or file that was refused, with the message that names its config key (``user_error``)."""


def user_error(error: BaseException, settings: Any = None) -> str | None:
    """The message for a setting or file that was refused, naming its config key; None for other errors (a bug's).

    Lightning's ``MisconfigurationException`` is a setting's error as it is, and a ``FILE_ERRORS`` error says its
    file and fix itself. Otherwise the key is found in the parsed ``settings`` (the subcommand's jsonargparse Namespace)
    by the refused value: the classes of this package name it as ``name=value`` in their messages (``presize=0 must
    be a positive integer``), so the keys whose last part and value read so are it; failing that, the keys whose text
    value (a path, a URL) the message quotes, the longest. A fix the message spells in Python (``pass
    skip_bad_images=True``) is spelled as on the command line (``--data.skip_bad_images true``).
    """
    if isinstance(error, MisconfigurationException):
        return f"error: {error}"
    message = original_message(error)
    leaves = [(k, v) for k, v in settings.items() if isinstance(v, (bool, int, float, str))] if settings else []
    if isinstance(error, FILE_ERRORS):
        return f"error: {cli_spelling(message, leaves)}"
    where = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    if settings is None or not where or not where[0].filename.startswith(REFUSERS):
        return None
    if where[0].filename.startswith(REFUSERS[0]) and not (where[0].line or "").startswith("raise"):
        return None
    keys = [key for key, value in leaves if f"{key.rsplit('.', 1)[-1]}={value!r}" in message]
    if not keys:
        quoted = [
            (key, value) for key, value in leaves if isinstance(value, str) and len(value) > 3 and value in message
        ]
        longest = max((len(value) for _, value in quoted), default=0)
        keys = [key for key, value in quoted if len(value) == longest]
    if not keys:
        return None
    fix = f"fix it in the config file or with --{keys[0]} on the command line"
    return f"error: {', '.join(keys)}: {cli_spelling(message, leaves)}\n  {fix}"


def original_message(error: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker, the worker's own (not its traceback)."""
    message = str(error.args[0]) if error.args else str(error)
    if "Original Traceback" in message:  # torch's ExceptionWrapper: "...\nmodule.Class: the message"
        message = message.rsplit(f"{type(error).__name__}: ", 1)[-1].strip()
    return message


def cli_spelling(message: str, leaves: list[tuple[str, Any]]) -> str:
    """``message`` with each setting it suggests as ``name=value`` (a value other than the current one) written as
    the command line takes it: ``--key value``."""
    keys = {key.rsplit(".", 1)[-1]: (key, value) for key, value in leaves}

    def respell(match: re.Match) -> str:
        name, text = match.group(1), match.group(2)
        if name not in keys or repr(keys[name][1]) == text:
            return match.group(0)
        value = {"True": "true", "False": "false", "None": "null"}.get(text, text.strip("'"))
        return f"--{keys[name][0]} {value}"

    return re.sub(r"\b(\w+)=(True|False|None|'[^']*'|-?[\d.]+(?:e-?\d+)?)", respell, message)
