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
