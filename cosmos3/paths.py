"""Checks of the folders a command will write into, made before anything is created or built, and the one
rule for every name (from an option or from a record) that becomes part of a path."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path

from cosmos3.errors import InputError

# One folder or file name: letters, digits and . _ - only, never '.' or '..' (it must start with a
# letter or digit), so it can never climb out of the folder it is joined to. At most NAME_MAX_CHARS,
# which leaves room under the filesystem's 255 bytes for the suffixes a command adds (-2, .json, staging).
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX_CHARS = 200
NAME_RULE_TEXT = (f"must be one folder name of letters, digits, '.', '_' and '-' (starting with a letter or "
                  f"digit, at most {NAME_MAX_CHARS} characters)")
# A preset as a record names it: a preset of cosmos3.presets, or one with another DiT depth (wan22-dit30).
PRESET_LABEL_RULE = re.compile(r"(?P<preset>[a-z0-9]+)(?:-dit[1-9][0-9]*)?")


def check_name(field: str, value: object) -> str:
    """`value` may be joined to a folder as one name (NAME_RULE); InputError naming `field` otherwise."""
    if not isinstance(value, str) or len(value) > NAME_MAX_CHARS or not NAME_RULE.fullmatch(value):
        raise InputError(field, NAME_RULE_TEXT, value)
    return value


def check_preset_label(field: str, value: object) -> str:
    """A known preset, optionally with its DiT depth: `tiny`, `wan22`, `wan22-dit30`."""
    from cosmos3.presets import PRESETS  # presets imports torch; this module stays light

    match = PRESET_LABEL_RULE.fullmatch(value) if isinstance(value, str) else None
    if match is None or match["preset"] not in PRESETS:
        raise InputError(field, f"must be a known preset ({', '.join(sorted(PRESETS))}), optionally with "
                                "-dit<N> for another DiT depth", value)
    return value


def check_inside(field: str, base: Path, path: Path) -> Path:
    """`path`, resolved, lies inside `base`, resolved: a write aimed at a folder stays in it."""
    try:
        real_base, real = Path(base).resolve(), Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop before Python 3.13
        raise InputError(field, f"must be a usable path ({reason(exc)})", str(path)) from None
    if real != real_base and real_base not in real.parents:
        raise InputError(field, f"must stay inside {base}, and resolves to {real}", str(path))
    return path


def reason(exc: BaseException) -> str:
    """An OSError as a user reads it: 'Too many levels of symbolic links', 'File name too long'."""
    if isinstance(exc, RuntimeError):
        return f"symlink loop: {exc}"
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "symlink loop"
    return getattr(exc, "strerror", None) or str(exc)


def _stat_problem(path: Path) -> str | None:
    """Why `path` cannot be used at all (a loop, a name too long, no permission); None if it can be, or is absent."""
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            return "it is a symlink to nothing"
        return None
    except NotADirectoryError:
        return None  # a file on the way; the caller names it
    except OSError as exc:
        return reason(exc)
    return None


def check_input_dir(field: str, path: Path) -> None:
    """A folder to read from: absent is the caller's business, but a loop or a name too long is an error."""
    problem = _stat_problem(Path(path))
    if problem:
        raise InputError(field, f"must be a usable folder ({problem})", str(path))


def check_output_dir(field: str, path: Path) -> None:
    """A folder to write into: an existing writable folder, or one that can be created.

    Probed by creating (and removing) a folder in the nearest existing one, so that what the checks
    cannot see (/proc, a read-only mount) fails here too; every OSError is an InputError naming `field`.
    """
    path = Path(path)
    problem = _stat_problem(path)
    if problem:
        raise InputError(field, f"must be a usable folder ({problem})", str(path))
    if os.path.lexists(path) and not path.is_dir():
        raise InputError(field, "must be a folder, and this is a file", str(path))
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    problem = _stat_problem(existing)
    if problem:
        raise InputError(field, f"must be a usable folder ({existing}: {problem})", str(path))
    if not existing.is_dir():
        raise InputError(field, f"must be a folder that can be created, but {existing} is a file", str(path))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(field, f"must be a folder we can write to, and {existing} is not writable", str(path))
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".probe-", suffix=".tmp"))
    except OSError as exc:
        raise InputError(field, f"must be a folder that can be created ({reason(exc)})", str(path)) from None


def make_output_dir(field: str, path: Path, *, exist_ok: bool = True) -> None:
    """Create the folder; a place the checks could not see is read-only (/proc, a read-only mount) fails here."""
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        raise InputError(field, "names a folder that exists; it is never overwritten", str(path)) from None
    except OSError as exc:
        raise InputError(field, f"must be a folder that can be created ({reason(exc)})", str(path)) from exc
