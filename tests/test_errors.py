"""errors: one line per error, exit codes per class."""

from __future__ import annotations

from onnxcollide.errors import ModelLoadError, OnnxCollideError, UnsupportedModelError, UsageError


def test_one_line_joins_where_what_and_hint():
    """``where: what. hint.`` with whitespace collapsed to single spaces (hint case is free)."""
    err = ModelLoadError("file not found", "a/b.onnx", "check the path")
    assert err.one_line().lower() == "a/b.onnx: file not found. check the path."
    assert str(err) == err.one_line()
    assert "\n" not in ModelLoadError("x  \n y", "w", "a\nb").one_line()
    assert OnnxCollideError("x  \n y").one_line() == "x y."
    assert OnnxCollideError("done.", hint="ok.").one_line().lower() == "done. ok."


def test_exit_codes():
    """Usage errors exit 2; model errors exit 3."""
    assert UsageError("bad").exit_code == 2
    assert ModelLoadError("bad").exit_code == 3
    assert UnsupportedModelError("bad").exit_code == 3


def test_hint_ending_in_question_mark_gets_no_extra_period():
    """A hint that is a question keeps its question mark as the last character."""
    err = UnsupportedModelError("no linear op", "m.onnx", "is this the model you meant?")
    assert err.one_line().endswith("meant?")
