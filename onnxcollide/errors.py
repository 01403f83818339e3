"""One error hierarchy for the core; the CLI turns each into one line and an exit code."""

from __future__ import annotations

import os


class OnnxCollideError(Exception):
    """Base class: a problem the user can act on.

    Attributes:
        what: what failed, one short sentence without a trailing period.
        where: the file, node or input it concerns (may be empty).
        hint: what to do about it (may be empty).
        exit_code: the CLI's exit status for this error.
    """

    exit_code = 3

    def __init__(self, what: str, where: str = "", hint: str = "") -> None:
        self.what = what
        self.where = where
        self.hint = hint
        super().__init__(self.one_line())

    def in_file(self, path: str) -> OnnxCollideError:
        """This error with ``path`` leading its location, unless it leads it already (a node
        name alone does not say which of several models is at fault)."""
        named = (path, os.path.abspath(path))  # the loader names the file by its full path
        if not any(self.where == p or self.where.startswith((f"{p},", f"{p}:")) for p in named):
            self.where = f"{path}, {self.where}" if self.where else path
            self.args = (self.one_line(),)
        return self

    def at(self, where: str) -> OnnxCollideError:
        """This error located at ``where`` (a node) where it names no location yet (an
        allocation check deep in the linear algebra knows no node)."""
        if not self.where:
            self.where = where
            self.args = (self.one_line(),)
        return self

    def one_line(self) -> str:
        """Return ``where: what. hint`` as one line."""
        text = _sentence(f"{self.where}: {self.what}" if self.where else self.what)
        if self.hint:
            text += " " + _sentence(self.hint[:1].upper() + self.hint[1:])
        return " ".join(text.split())


def _sentence(text: str) -> str:
    """End ``text`` with a period unless it already ends with . ? or !."""
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else text + "."


class ModelLoadError(OnnxCollideError):
    """The file is missing, unreadable, truncated or not an ONNX model."""


class UnsupportedModelError(OnnxCollideError):
    """The model loads but holds something we cannot analyse."""


class UsageError(OnnxCollideError):
    """An option value that does not fit the model (wrong input name, bad shape)."""

    exit_code = 2
