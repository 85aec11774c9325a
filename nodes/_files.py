"""Every file a node reads or writes goes through here: names resolved inside their own ComfyUI folder.

Reading (:func:`read_path`): a node input names a file (or folder) relative to one ComfyUI folder: ``input``
(with ComfyUI's ``name [output]`` / ``[temp]`` annotations), ``output``, ``temp``, or a model folder key
(``checkpoints``, ``mvcustom`` ...: ``models/<key>`` and its extra_model_paths.yaml folders). Absolute
names, ``..``, NUL and other control characters, and names that leave the folder through a symbolic link
are refused with the *same* message as a name that does not exist, so a remote client learns nothing
about the server's files. :func:`reading` then words what goes wrong while reading that file with its
given name, never the server's absolute path.

Writing: :func:`file_name` checks a user-chosen file name (no folder part), :func:`claim` refuses, before
any work is done, to replace an existing file that the pack did not write for the same subject (unless
the node's ``overwrite`` input is on), and :func:`write_owned` writes atomically with the same rule
re-checked at the moment of writing. Numbered outputs (``<prefix>_<counter>``) come from
``_common.numbered_output``, which keeps them inside the output folder.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator, Literal, Mapping

from mvcustom_core.files import plain_file_name, resolve_inside

from ._common import NodeInputError, input_for, require
from ._host import folder_paths, model_management

__all__ = ["read_path", "reading", "model_roots", "folder_label", "file_name", "claim", "write_owned",
           "HOST_FOLDERS"]

HOST_FOLDERS = ("input", "output", "temp")
_ANNOTATIONS = {"[input]": "input", "[output]": "output", "[temp]": "temp"}
_SHOWN_CHARS = 120


def model_roots(key: str) -> list[str]:
    """Every folder registered for the model key ``key`` (``models/<key>`` first when ComfyUI made it so)."""
    names = getattr(folder_paths, "folder_names_and_paths", None)
    if names is not None and key in names:
        return list(folder_paths.get_folder_paths(key))
    models_dir = getattr(folder_paths, "models_dir", None)
    return [os.path.join(models_dir, key)] if models_dir else []


Folders = str | tuple[str, ...]  # one folder, or several model keys searched in order


def _roots(folder: Folders) -> list[str]:
    if isinstance(folder, tuple):
        return [root for key in folder for root in _roots(key)]
    if folder in HOST_FOLDERS:
        return [getattr(folder_paths, f"get_{folder}_directory")()]
    return model_roots(folder)


def folder_label(folder: Folders) -> str:
    """How messages name a folder: ``ComfyUI's input folder``, ``models/checkpoints``, ``models/a or models/b``."""
    if isinstance(folder, tuple):
        return " or ".join(folder_label(key) for key in folder)
    return f"ComfyUI's {folder} folder" if folder in HOST_FOLDERS else f"models/{folder}"


def _shown(value: object) -> str:
    """The user's own value, quoted and shortened (it is theirs, so it reveals nothing)."""
    if not isinstance(value, str):
        return type(value).__name__
    return repr(value[:_SHOWN_CHARS]) + ("…" if len(value) > _SHOWN_CHARS else "")


def _split_annotation(name: str, folder: Folders) -> tuple[str, Folders]:
    """ComfyUI's ``"name [output]"`` annotation picks the host folder (only for names in the input folder)."""
    if folder == "input" and isinstance(name, str):
        for tag, target in _ANNOTATIONS.items():
            if name.endswith(tag):
                return name[: -len(tag)].rstrip(), target
    return name, folder


def read_path(node: type | str, input_name: str, name: str, folder: Folders = "input", *,
              kind: Literal["file", "dir", "any"] = "file", what: str = "file", hint: str = "") -> Path:
    """The path of the file (or folder, per ``kind``) that input ``input_name`` names inside ``folder`` (for a
    tuple of model keys, the first of their folders that holds it).

    Every failure other than an empty name raises one message (``... must name a <what> in <folder>;
    <value> is not one``), whatever the reason: missing, outside, absolute, ``..``, NUL, a link out.
    ``hint`` ends the message (what to do, e.g. "pick one from the list or upload one").
    """
    tail = f" ({hint})" if hint else ""
    require(node, input_name, isinstance(name, str) and name.strip() != "",
            f"is empty: it must name a {what} in {folder_label(folder)}{tail}")
    relative, where = _split_annotation(name, folder)
    path = resolve_inside(relative, _roots(where), kind=kind)
    if path is None:
        raise NodeInputError(node, input_name, f"must name a {what} in {folder_label(where)}; {_shown(name)} "
                                               f"is not one{tail}")
    return path


def _redact(message: str, path: Path, shown: str) -> str:
    """``message`` with the file's absolute path written as the name the user gave (other server paths are
    made relative by :class:`NodeInputError`)."""
    for spelling in sorted({str(path), os.path.realpath(path)}, key=len, reverse=True):
        message = message.replace(spelling, shown)
    return message


@contextlib.contextmanager
def reading(node: type | str, input_name: str, name: str, path: Path, folder: Folders = "input", what: str = "a file",
            arguments: Mapping[str, str] | None = None) -> Iterator[None]:
    """Words any failure while reading ``path`` (a bad format, a truncated file, a wrong pickle...) as
    ``<node>: input '<input_name>' <name> could not be read as <what>: <reason>``, the reason free of the
    server's paths. An error the core marks as being about another argument (``mvcustom_core.checks.about``)
    names the input ``arguments`` maps it to instead (e.g. ``{"format": "format"}``). ComfyUI's interrupt and
    :class:`NodeInputError` pass unchanged."""
    shown = _split_annotation(name, folder)[0]
    try:
        yield
    except NodeInputError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a parser raises on a user's file is a fact about that file
        if isinstance(e, model_management.InterruptProcessingException):  # an Exception in ComfyUI 0.3.x
            raise
        reason = _redact(str(e) or type(e).__name__, path, shown)
        other = input_for(e, arguments or {})
        if other is not None and other != input_name:
            raise NodeInputError(node, other, f"does not fit {_shown(shown)}: {reason}") from e
        raise NodeInputError(node, input_name, f"{_shown(shown)} could not be read as {what}: {reason}") from e


# ---------------------------------------------------------------------------------------------- writing
def file_name(node: type | str, input_name: str, name: str, what: str = "name") -> str:
    """``name`` stripped of surrounding spaces if it is a plain file name on every system (no folder part,
    ``..``, NUL, control characters, Windows' reserved characters and device names, leading or trailing dot;
    :func:`~mvcustom_core.files.plain_file_name`), else :class:`NodeInputError`."""
    stem = name.strip() if isinstance(name, str) else name
    require(node, input_name, plain_file_name(stem) is not None,
            f"must be a plain {what} (letters, digits, spaces, '-', '_'; no folders, no leading '.', none of "
            f"<>:\"|?*, not a device name such as CON or NUL); got {_shown(name)}")
    return stem


def claim(node: type | str, input_name: str, paths: dict[str, Path], ours: Callable[[Path], bool],
          overwrite: bool) -> None:
    """Refuse (naming ``input_name``) if any of ``paths`` (``{shown name: path}``) exists, unless ``overwrite``
    or ``ours(path)`` says the pack wrote it for this same subject. Call it before long work."""
    if overwrite:
        return
    taken = [shown for shown, path in paths.items() if os.path.lexists(path) and not ours(path)]
    require(node, input_name, not taken,
            f"would replace {', '.join(taken)}, which MVCustom did not write for this subject; choose another "
            "name or turn on 'overwrite'")


def write_owned(node: type | str, input_name: str, shown: str, path: Path, write: Callable[[Path], Path],
                ours: Callable[[Path], bool], overwrite: bool) -> Path:
    """``write(path, replace=...)`` (an atomic writer) with the rule of :func:`claim` applied at the moment the
    file is moved into place, so a file that appeared meanwhile is not replaced either."""
    try:
        return write(path, replace=True if overwrite else ours)
    except FileExistsError:
        raise NodeInputError(node, input_name, f"would replace {shown}, which appeared while this node ran and "
                                               "MVCustom did not write; choose another name or turn on "
                                               "'overwrite'") from None

