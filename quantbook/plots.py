"""Pictures of codebooks (matplotlib, optional extra ``quantbook[plot]``).

* :func:`plot_levels` — the density of one absmax-normalised value of a block of ``B``
  i.i.d. weights (:class:`quantbook.derive.block.BlockDistribution`; the point masses
  ``1/(2B)`` at ±1 drawn as arrows) with each codebook's levels drawn beneath it;
* :func:`plot_sweep` — exact expected MSE and MAE (the derivation engine's ``evaluate``;
  weights in units of σ, or the normalised values) against the block size, 16 … 16384 by
  default; a table may be re-derived at each block size;
* :func:`plot_model_report` — per-tensor SQNR of an ``evaluate-model`` run.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global
backend switch, no display needed) and written in the format the output file's extension
names (:func:`plot_format`: ``.png``, ``.pdf``, ``.svg`` ...; PNG when there is none).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .io.files import check_output_path, name_text, write_output
from .scales import DEFAULT_QMAX, layout_qmax

__all__ = ["plot_levels", "plot_sweep", "sweep_errors", "sweep_table", "plot_model_report", "plot_model_quality",
           "plot_format", "check_plot_path", "SWEEP_BLOCK_SIZES"]

#: the block sizes `plot_sweep` and `sweep_table` take by default: the powers of two 16 .. 16384
SWEEP_BLOCK_SIZES = tuple(2**k for k in range(4, 15))


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'quantbook[plot]'") from None
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_format(out: str | os.PathLike) -> str:
    """The image format an output path names by its extension (case-insensitive; none: ``png``).

    Any format matplotlib writes (png, pdf, svg, eps, jpg, webp, ...); another extension is a
    ``ValueError``, so ``p.pdf`` never receives PNG bytes.
    """
    suffix = Path(os.fspath(out)).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'quantbook[plot]'") from None
    # raw/rgba are headerless pixel dumps and pgf is LaTeX code (it needs a TeX install): not pictures
    usable = sorted(set(FigureCanvasBase.get_supported_filetypes()) - {"raw", "rgba", "pgf"})
    if suffix not in usable:
        raise ValueError(f"cannot draw {os.fspath(out)!r}: unknown image extension .{suffix} "
                         f"(use one of {', '.join('.' + k for k in usable)})")
    return suffix


def check_plot_path(out: str | os.PathLike, inputs: Iterable[Any] = ()) -> Path:
    """``out`` as a Path if a picture can be written there (path and extension checked), else
    ``ValueError``; ``inputs``: the files the picture is made from, which it must not replace
    (entries that name no file are passed over)."""
    if os.fspath(out) == "-":   # the usual spelling of standard output, which a picture does not go to
        raise ValueError("a picture is written to a file, not to standard output (-): give e.g. plot.png")
    p = check_output_path(out, _input_files(inputs))
    plot_format(out)
    return p


def _input_files(inputs: Iterable[Any]) -> list[str | os.PathLike]:
    """The entries of ``inputs`` that may name a file: strings (as given and without surrounding
    spaces, as names are read) and path objects; codebook objects and None are not files."""
    out: list[str | os.PathLike] = []
    for item in inputs:
        if isinstance(item, str):
            out.extend((item, item.strip()) if item.strip() else ())
        elif isinstance(item, os.PathLike):
            out.append(item)
    return out


def _save(fig, out: str | os.PathLike) -> None:
    fmt = plot_format(out)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, bbox_inches="tight")   # a title or legend wider than the axes stays whole
    except (RuntimeError, OSError) as exc:  # a writer library missing or failing
        raise ValueError(f"cannot draw {os.fspath(out)!r} as {fmt}: {' '.join(str(exc).split())[:200]}") from None
    write_output(buf.getvalue(), out)  # atomic: a failed write leaves an existing file as it was


def _plain(text: Any) -> str:
    """A user's name (a file, a tensor, a label) as matplotlib draws it literally: ``$`` escaped
    (an even number of them is otherwise TeX math, which may not parse), bytes that are
    not UTF-8 (a file name's, held as surrogates) shown as U+FFFD, and a leading ``_`` (which
    keeps a label out of a legend) behind a zero-width space."""
    t = name_text(text).replace("$", r"\$")
    return "\u200b" + t if t.startswith("_") else t   # a legend leaves out labels that begin with "_"


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


#: markers and line styles per series: with more than ten series the colours repeat, these do not
_MARKERS = "osD^vP*Xh<>"
_LINESTYLES = ("-", "--", ":", "-.")


def _style(i: int) -> tuple[str, str]:
    """(marker, line style) of series ``i``: the same as series ``i - 10`` never."""
    return _MARKERS[i % len(_MARKERS)], _LINESTYLES[(i // 10) % len(_LINESTYLES)]


def _norm_text(normalization: str) -> str:
    """How a plot writes the normalised value y under ``normalization``."""
    return {"absmax": "x/absmax", "signed-absmax": "x/(signed absmax)", "none": "x/σ"}.get(normalization,
                                                                                        normalization)


def plot_levels(codebooks: Sequence[tuple[str, Any]], block_size: int, out: str | os.PathLike,
                source: Any = "normal", normalization: str = "absmax") -> None:
    """Levels of each ``(label, Codebook)`` under the block-``block_size`` density of ``source``."""
    from .derive.block import BlockDistribution

    check_plot_path(out)  # before any work
    dist = BlockDistribution(block_size, source, normalization)
    y = np.linspace(-1.0, 1.0, 1601)[1:-1]
    pdf = dist.pdf(y)
    n = len(codebooks)
    fig = _figure(8.0, 3.2 + 0.32 * n)
    ax = fig.add_subplot()
    top = float(np.max(pdf)) * 1.12
    ax.fill_between(y, pdf, color="0.85", lw=0)
    ax.plot(y, pdf, color="0.35", lw=1.2,
            label=f"density of {_norm_text(normalization)}, B={block_size} ({_plain(dist.source.spec)})")
    ax_x, ax_w = dist.atoms
    # a table beyond [-1, 1] (e.g. Max's, in units of σ) is shown whole, not cut at the density's
    # edge; the atoms' labels then go outside, where the axis has room
    reach = max([1.0] + [float(np.max(np.abs(cb.levels))) for _, cb in codebooks])
    out_side = reach > 1.3
    for xa, wa in zip(ax_x, ax_w):
        ax.annotate("", xy=(xa, top * 0.55), xytext=(xa, 0), arrowprops=dict(arrowstyle="-|>", color="0.35", lw=1.2))
        inward = (xa < 0) != out_side
        ax.text(xa + (0.02 if inward else -0.02), top * 0.5, f"P(y={xa:+g}) = {wa:.2g}",
                ha="left" if inward else "right", va="bottom", fontsize=7, color="0.3")
    step = top / 9
    for i, ((label, cb), color) in enumerate(zip(codebooks, _colors(n))):
        row = -(i + 1) * step
        ax.axhline(row, color=color, lw=0.4, alpha=0.5)
        lv = np.asarray(cb.levels, dtype=np.float64)
        ax.plot(lv, np.full(lv.size, row), "|", ms=11, mew=2, color=color)
        ax.text(-0.01, row, _plain(label), ha="right", va="center", fontsize=8, color=color,
                transform=ax.get_yaxis_transform())
    ax.set_xlim(-1.06 * reach, 1.06 * reach)
    ax.set_ylim(-(n + 0.8) * step, top)
    ax.set_xlabel(f"normalised value  y = {_norm_text(normalization)} (block)")
    ax.set_ylabel("density")
    ax.set_yticks([t for t in ax.get_yticks() if t >= 0])
    ax.set_title(f"Codebook levels over the block-{block_size} density", fontsize=10)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, out)


def sweep_errors(codebook: Any, block_sizes: Sequence[int] | np.ndarray, source: Any = "normal",
                 normalization: str = "absmax", domain: str = "weight", scale: Any = None,
                 qmax: float | None = None) -> dict[str, np.ndarray]:
    """Exact expected ``{"mse": ..., "mae": ...}`` at each block size (:func:`quantbook.derive.metrics.evaluate`).

    ``codebook`` is a Codebook, or a callable ``B -> Codebook`` for a table re-derived at each
    block size.  ``domain="weight"``: errors of the weights in units of the source's standard
    deviation (MSE in σ², MAE in σ); ``"normalized"``: errors of ``y = x/absmax``.
    ``scale``/``qmax``: evaluate in that scale rule's scaled layout (as ``evaluate`` does; the
    normalised domain is then in units of the table's largest magnitude).
    """
    from .derive.metrics import evaluate

    if domain not in ("weight", "normalized"):
        raise ValueError(f"domain must be weight or normalized, got {domain!r}")
    mse, mae = [], []
    for B in block_sizes:
        cb = codebook(int(B)) if callable(codebook) else codebook
        ev = evaluate(cb, int(B), source, normalization, scale=scale, qmax=qmax)
        mse.append(ev.mse_weight if domain == "weight" else ev.mse_normalized)
        mae.append(ev.mae_weight if domain == "weight" else ev.mae_normalized)
    return {"mse": np.array(mse), "mae": np.array(mae)}


def sweep_table(codebooks: Sequence[tuple[str, Any]], block_sizes: Sequence[int] | np.ndarray = SWEEP_BLOCK_SIZES,
                source: Any = "normal", normalization: str = "absmax", domain: str = "weight", scale: Any = None,
                qmax: float | None = None) -> dict[str, dict[str, np.ndarray]]:
    """The numbers :func:`plot_sweep` draws, without drawing (no matplotlib needed):
    ``{label: {"mse": array, "mae": array}}`` of :func:`sweep_errors` for each ``(label, Codebook | B -> Codebook)``."""
    bs = np.asarray(block_sizes, dtype=np.int64)
    return {label: sweep_errors(cb, bs, source, normalization, domain, scale, qmax) for label, cb in codebooks}


def plot_sweep(codebooks: Sequence[tuple[str, Any]], out: str | os.PathLike,
               block_sizes: Sequence[int] | np.ndarray = SWEEP_BLOCK_SIZES, source: Any = "normal",
               normalization: str = "absmax", domain: str = "weight", scale: Any = None,
               qmax: float | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Expected MSE and MAE against block size for each ``(label, Codebook | B -> Codebook)``,
    under the scale rule ``scale`` (with ``qmax``) when one is given.

    Returns the plotted numbers ``{label: {"mse": array, "mae": array}}`` (:func:`sweep_table`).
    """
    check_plot_path(out)  # before any work
    bs = np.asarray(block_sizes, dtype=np.int64)
    errors = sweep_table(codebooks, bs, source, normalization, domain, scale, qmax)
    fig = _figure(9.5, 4.3)
    axes = fig.subplots(1, 2)
    for i, ((label, _), color) in enumerate(zip(codebooks, _colors(len(codebooks)))):
        marker, line = _style(i)
        for ax, key in zip(axes, ("mse", "mae")):
            ax.plot(bs, errors[label][key], marker=marker, ls=line, ms=3, lw=1.3, color=color, label=_plain(label))
    src = _plain(getattr(source, "spec", source))
    # the layout is part of what the numbers mean
    shown_qmax = layout_qmax(scale, DEFAULT_QMAX if qmax is None else qmax)
    layout = "" if scale is None else (f", scale {getattr(scale, 'name', scale)}"
                                       + ("" if shown_qmax is None else f", qmax {shown_qmax:g}"))
    norm = "" if normalization == "absmax" else f", {normalization}"
    from .derive.metrics import normalized_unit

    if domain == "weight":
        units = {"mse": "MSE of the weights (σ²)", "mae": "MAE of the weights (σ)"}
    elif normalized_unit(normalization, scale) == "qmax·s":   # the table's largest magnitude, decoded
        units = {k: f"{k.upper()} of x / (qmax · scale)" for k in ("mse", "mae")}
    else:   # float32 and nested statistics encode with the exact absmax
        units = {k: f"{k.upper()} of y = {_norm_text(normalization)}" for k in ("mse", "mae")}
    for ax, key, title in zip(axes, ("mse", "mae"), ("expected squared error", "expected absolute error")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("block size B")
        ax.set_ylabel(units[key])
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(_wrap(f"{src} weights{norm}{layout}", 110), fontsize=10)
    axes[0].legend(fontsize=8, frameon=False)
    _save(fig, out)
    return errors


def _wrap(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters (titles that would be cut)."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _strip_common_prefix(names: Sequence[str]) -> tuple[str, list[str]]:
    """Common dotted prefix (e.g. ``"encoder.layer."``) and the names without it."""
    if len(names) < 2:
        return "", list(names)
    parts = [n.split(".") for n in names]
    k = 0
    while all(len(p) > k + 1 for p in parts) and len({p[k] for p in parts}) == 1:
        k += 1
    prefix = ".".join(parts[0][:k]) + ("." if k else "")
    return prefix, [".".join(p[k:]) for p in parts]


def plot_model_report(report: Any, out: str | os.PathLike) -> None:
    """Per-tensor SQNR (dB) of a :class:`quantbook.model.ModelReport`, one series per codebook."""
    check_plot_path(out)
    prefix, names = _strip_common_prefix([t.name for t in report.tensors])
    longest = max((len(n) for n in names), default=10)
    width = max(9.0, min(0.16 * len(names) + 3, 22))
    fig = _figure(width, 3.2 + 0.065 * min(longest, 60))
    ax = fig.add_subplot()
    x = np.arange(len(names))
    k = len(report.codebooks)
    for j, (label, color) in enumerate(zip(report.codebooks, _colors(k))):
        v = [t.sums[label].sqnr_db for t in report.tensors]
        total = report.totals[label].sqnr_db
        dx = (j - (k - 1) / 2) * min(0.6 / max(k, 1), 0.15)
        ax.plot(x + dx, v, _style(j)[0], ms=4, color=color, alpha=0.85,
                label=f"{_plain(label)} (all: {total:.2f} dB)")
    ax.set_xticks(x)
    ax.set_xticklabels([_plain(n) for n in names], rotation=90, fontsize=7 if len(names) <= 80 else 5)
    ax.set_xlim(-0.7, len(names) - 0.3)
    ax.set_ylabel("SQNR (dB)")
    where = f", tensors {prefix}*" if prefix else ""
    fig.suptitle(_wrap(f"{_plain(Path(report.path).name)}: per-tensor SQNR, block size {report.block_size}, "
                       f"{report.scale_text}{_plain(where)}", int(width * 11)), fontsize=10)
    ax.grid(True, axis="y", lw=0.3, alpha=0.5)
    ax.legend(fontsize=8, frameon=False, ncols=max(1, min(k, int(width // 3))), loc="lower center",
              bbox_to_anchor=(0.5, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, out)


def plot_model_quality(report: Any, out: str | os.PathLike) -> None:
    """A :class:`quantbook.model.quality.QualityReport`'s task metric (``report.plot_metric``:
    KL divergence for ``lm``, 1 − cosine for ``embed``) against bits per weight, one point
    per codebook (log scale; the unquantized model, the first row, is left out)."""
    check_plot_path(out)
    key, ylabel = report.plot_metric
    labels = report.labels[1:]
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    for j, (label, color) in enumerate(zip(labels, _colors(len(labels)))):
        r = report.rows[label]
        y = max(float(r[key]), 1e-12)  # a log axis cannot show 0
        ax.plot([r["bits_per_weight"]], [y], _style(j)[0], ms=6, color=color, label=_plain(label))
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (scales included)")
    ax.set_ylabel(ylabel, fontsize=8)
    fig.suptitle(f"{_plain(Path(report.path).name)}: task {report.task}, block size {report.block_size}, "
                 f"{report.scale_text}",
                 fontsize=10)
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.legend(fontsize=7, frameon=False, loc="best")
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, out)
