"""quantbook.io.progress: one tqdm-based progress bar, off unless stderr is a terminal or forced."""

from __future__ import annotations

import sys

import pytest

from quantbook.io import progress as pg


@pytest.fixture
def tqdm():
    """The bars need tqdm; that they are silently off without it does not."""
    return pytest.importorskip("tqdm")


def test_off_when_not_a_terminal_unless_forced(tqdm, capsys):
    assert not pg.progress_enabled()  # pytest's captured stderr is not a terminal
    with pg.progress_bar(total=3, desc="work") as bar:
        assert not bar.enabled
        bar.step("a")
    assert capsys.readouterr().err == ""
    assert pg.progress_enabled(force=True)


def test_forced_bar_counts_finished_items(tqdm, capsys):
    with pg.progress_bar(total=3, desc="work", unit="item", force=True) as bar:
        for name in ("alpha", "beta", "gamma"):
            bar.step(name)
    err = capsys.readouterr().err
    assert "work" in err and "3/3" in err and "gamma" in err


def test_an_exception_does_not_count_the_item_in_progress(tqdm, capsys):
    with pytest.raises(RuntimeError):
        with pg.progress_bar(total=3, desc="work", force=True) as bar:
            bar.step("a")
            bar.step("b")
            raise RuntimeError
    err = capsys.readouterr().err
    assert "1/3" in err and "2/3" not in err


def test_silently_off_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    assert not pg.progress_enabled(force=True)
    with pg.progress_bar(total=2, force=True) as bar:
        bar.step("x")
        bar.update()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("error,in_flush", [(BrokenPipeError(32, "Broken pipe"), True),
                                            (OSError(28, "No space left on device"), False)])
def test_a_standard_error_that_fails_stops_the_bar_not_the_work(tqdm, monkeypatch, error, in_flush):
    # a closed pipe on stderr (`derive ... --progress 2>&1 | head`) raised BrokenPipeError out of the bar,
    # which ended the command before it wrote its output file; a full disk (2> log) is the same, and
    # an unbuffered stream fails in write alone
    class Closed:
        writes = 0

        def write(self, text):
            Closed.writes += 1
            raise error

        def flush(self):
            if in_flush:
                raise error

        def isatty(self):
            return False

    monkeypatch.setattr(sys, "stderr", Closed())
    done = []
    with pg.progress_bar(total=3, desc="work", force=True) as bar:
        for name in ("a", "b", "c"):
            bar.step(name)
            done.append(name)
    assert done == ["a", "b", "c"] and Closed.writes == 1   # the first failure turned the drawing off
