"""Bad-input errors: one clear line naming file/line/field, exit status 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_BAD_INPUT = 2

F = TypeVar("F", bound=Callable[..., object])


class InputError(Exception):
    """A user-facing problem with a config, dataset line, model output or checkpoint.

    The message should already name where the problem is (``file:line: field: reason``).
    """


def cli(main: F) -> F:
    """Wrap a script's ``main`` so an ``InputError`` prints one line and exits 2."""

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return main(*args, **kwargs)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT) from None

    return wrapper  # type: ignore[return-value]
