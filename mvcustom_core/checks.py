"""One small vocabulary of input checks shared by every public op.

``check_shape(x, "F 3 3", "K")`` checks rank and the numeric entries of a shape spec and binds the
letters, so ``check_shape(y, "F N", "depth", dims)`` with the same ``dims`` dictionary also checks that
``F`` agrees across arguments of one call (kornia's checks do not). Errors are ``ValueError`` naming
the argument, so node adapters can prefix the node and input name; :func:`about` marks an error with the
argument it concerns when the message alone would not tell.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, TypeVar

import torch
from torch import Tensor

__all__ = ["check_shape", "check_finite", "ShapeError", "about", "within"]

E = TypeVar("E", bound=BaseException)


def about(argument: str, error: E) -> E:
    """``error`` marked as being about the argument ``argument`` of the call that raised it (dotted for a
    field of an argument: ``"dfr.layers"``), so a node adapter can name the input that holds it, whatever
    the message says. Returns ``error``: ``raise about("format", PoseFileError(...))``."""
    error.argument = argument
    return error


@contextlib.contextmanager
def within(argument: str) -> Iterator[None]:
    """Errors raised inside are about ``argument`` of the enclosing call: a ``ValueError`` marked by
    :func:`about` for a nested call's argument ``x`` becomes ``"<argument>.x"``, an unmarked one ``argument``."""
    try:
        yield
    except ValueError as error:
        inner = getattr(error, "argument", None)
        raise about(f"{argument}.{inner}" if inner else argument, error)


class ShapeError(ValueError):
    """A tensor whose shape does not match its spec."""


def check_shape(x: Tensor, spec: str, name: str, dims: dict[str, int] | None = None) -> dict[str, int]:
    """Check ``x.shape`` against a space-separated spec and return the letter bindings.

    Spec tokens: an integer (exact size), a letter or word (bound on first use, then must agree), or
    ``*`` (any number of leading dims, only as the first token).

    Example:
        >>> d = check_shape(torch.zeros(2, 3, 3), "F 3 3", "K")
        >>> d["F"]
        2
    """
    if not isinstance(x, Tensor):
        raise ShapeError(f"{name} must be a tensor, got {type(x).__name__}")
    dims = {} if dims is None else dims
    tokens = spec.split()
    shape = tuple(x.shape)
    if tokens and tokens[0] == "*":
        tokens = tokens[1:]
        if len(shape) < len(tokens):
            raise ShapeError(f"{name} must have shape [*, {', '.join(tokens)}], got {list(shape)}")
        shape = shape[len(shape) - len(tokens):]
    elif len(shape) != len(tokens):
        raise ShapeError(f"{name} must have shape [{', '.join(tokens)}], got {list(shape)}")
    for tok, size in zip(tokens, shape):
        if tok.isdigit():
            if size != int(tok):
                raise ShapeError(f"{name} must have shape [{', '.join(tokens)}], got {list(x.shape)}")
        elif tok in dims:
            if dims[tok] != size:
                raise ShapeError(f"{name}: dimension {tok} is {size} here but {dims[tok]} elsewhere "
                                 f"(shape {list(x.shape)}, spec [{', '.join(tokens)}])")
        else:
            dims[tok] = size
    return dims


def check_finite(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and the first offending index if ``x`` has NaN or inf."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{name} contains a non-finite value ({float(x[idx])}) at index {list(idx)}")
