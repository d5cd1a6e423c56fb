"""``spikefm generate``: sample spike arrays from an autoregressive model, optionally prompted with
real bins from a corpus, and draw generated next to real activity."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from spikefm.fileio import check_file_target, savez_atomic, write_atomic


class PastTrainedContext(RuntimeWarning):
    """A generation reads more tokens of context than the model was trained on."""


def _segment_key(segment_id: str) -> tuple[int, str]:
    """Sort key of a row's segment id: its trailing number (``segment_10`` after ``segment_9``)."""
    digits = len(segment_id) - len(segment_id.rstrip("0123456789"))
    return (int(segment_id[-digits:]) if digits else -1, segment_id)


def _session_stretches(rows: list, ordered: bool) -> list[list]:
    """Rows of one session (sorted) -> runs of rows that lie back to back on one timeline.

    Two neighbouring rows are joined only when the session's rows are on one clock (``ordered``:
    the manifest's ``segments_ordered`` is not false), have the same units, and the second starts
    where the first ends; otherwise a stretch ends there (an imported session whose segment order
    is unknown, or whose segments have different unit counts: one stretch per row).
    """
    stretches = [[rows[0]]]
    for prev, r in zip(rows, rows[1:]):
        joined = ordered and r.num_units == prev.num_units and \
            int(r.t_start_ms) == int(prev.t_start_ms) + prev.num_bins * int(prev.bin_ms)
        if joined:
            stretches[-1].append(r)
        else:
            stretches.append([r])
    return stretches


def _prompt_counts(spec: str, prompt_bins: int, num_bins: int, check_corpus=None):
    """``CORPUS_DIR:SESSION_ID:START_BIN`` -> (prompt counts, the real bins that follow, bin_ms).

    START_BIN counts the session's bins: its rows one after another, in time order (rows of an
    imported session whose order is unknown all start at 0 ms: then in segment order). The prompt
    and the real bins that follow it never cross from one row into another that does not continue
    it on the same timeline (see :func:`_session_stretches`): such a prompt is refused, naming
    the rows' bins, and the real bins stop at the row's end (with a warning). So a session whose
    rows have different unit counts still gives a prompt, of the units of the row that holds it.

    ``check_corpus``: called with the prompt's corpus before any row is read (e.g. to refuse
    another bin width than the model's).
    """
    from spikefm.corpus.reader import Corpus

    try:
        corpus_dir, session_id, start = spec.rsplit(":", 2)
        start = int(start)
    except ValueError:
        raise ValueError(f"--prompt must be CORPUS_DIR:SESSION_ID:START_BIN, got {spec!r}") from None
    corpus = Corpus(corpus_dir)
    if check_corpus is not None:
        check_corpus(corpus)
    meta = corpus.session(session_id)  # a clear error for an unknown session
    ordered = meta.get("segments_ordered") is not False
    rows = sorted((r for split in ("train", "test") for r in corpus.iter_rows(split,
                   sessions=[session_id], with_extras=False)),
                  key=lambda r: (int(r.t_start_ms), _segment_key(r.segment_id or "")))
    if not rows:
        raise ValueError(f"session {session_id} has no rows in {corpus_dir}; the corpus is damaged: "
                         "rebuild or re-import it")
    stretches = _session_stretches(rows, ordered)
    total = sum(r.num_bins for r in rows)
    if start < 0:
        raise ValueError(f"--prompt {spec}: START_BIN must be >= 0 (a bin of the session, 0..{total - 1}), got {start}")
    if start + prompt_bins > total:
        raise ValueError(f"session {session_id} has {total} bins; START_BIN {start} + "
                         f"{prompt_bins} prompt bins does not fit: "
                         + (f"start at most at bin {total - prompt_bins}, or give fewer --prompt-bins"
                            if prompt_bins <= total else f"give --prompt-bins {total} or fewer"))
    first = 0  # session bin where the stretch that holds START_BIN starts
    for stretch in stretches:
        size = sum(r.num_bins for r in stretch)
        if start < first + size or stretch is stretches[-1]:
            break
        first += size
    if start + prompt_bins > first + size:
        units = sorted({r.num_units for r in rows})
        why = (f"units {'/'.join(map(str, units))} differ across them" if len(units) > 1 else
               "their order is unknown: imported with segments not numbered 0..k-1" if not ordered
               else "they are not back to back in time")
        if not ordered:
            why += "; the manifest records segments_ordered false"
        spans, b = [], 0
        for r in rows[:6]:
            spans.append(f"{b}-{b + r.num_bins - 1} ({r.segment_id or 'row'}, {r.num_units} units)")
            b += r.num_bins
        raise ValueError(f"session {session_id}: START_BIN {start} + {prompt_bins} prompt bins crosses "
                         f"from one row into the next, and its rows cannot be joined on one timeline "
                         f"({why}); start the prompt and end it inside one row, session bins: "
                         + ", ".join(spans) + (" ..." if len(rows) > 6 else ""))
    counts = stretch[0].spike_counts if len(stretch) == 1 else \
        np.concatenate([r.spike_counts for r in stretch], axis=1)
    a = start - first
    real = counts[:, a + prompt_bins:a + prompt_bins + num_bins]
    if real.shape[1] < num_bins:  # the session ends: compare with what there is, and say so
        where = f"session {session_id}" if stretch is stretches[-1] else (
            f"session {session_id}'s row {stretch[-1].segment_id or ''} (its rows cannot be joined on "
            "one timeline, so the real bins stop there)")
        warnings.warn(f"{where} ends {real.shape[1]} bin(s) after the prompt, fewer than "
                      f"--bins {num_bins}: " + ("no real bins to compare with (the .npz holds no "
                      "'real')" if real.shape[1] == 0 else f"the real-vs-generated comparison uses "
                      f"those {real.shape[1]}") + "; start the prompt earlier for a full comparison",
                      RuntimeWarning, stacklevel=2)
    return (counts[:, a:a + prompt_bins], real if real.shape[1] else None,
            int(corpus.manifest.get("bin_ms") or 0))


def _run_bin_ms(cfg) -> int:
    """The bin width of the corpus a run was trained on (``cfg``: its RunConfig, whose corpus
    :func:`spikefm.train.runinfo.load_run_config` found from any working directory); 0 when it
    cannot be read (None: a Hugging Face folder; a corpus moved away)."""
    from spikefm.corpus.reader import Corpus

    if cfg is None or not cfg.data.corpus:
        return 0
    try:
        return int(Corpus(cfg.data.corpus).manifest.get("bin_ms") or 0)
    except (ValueError, OSError, TypeError):
        return 0


def generate_to_file(run_dir: str | Path, *, num_units: int, num_bins: int,
                     prompt: str | None = None, prompt_bins: int = 25, temperature: float = 1.0,
                     top_k: int | None = None, seed: int = 0, device: str = "cpu",
                     out: str | Path, progress: bool = False) -> list[Path]:
    """Sample (num_units, num_bins) counts and write ``out`` (.npz with ``counts``, ``bin_ms``
    (the prompt corpus's bin width, else the training corpus's, when readable) and, when
    prompted, ``prompt`` and ``real``), plus ``out`` with .png: a raster of real next to generated
    bins when prompted, else of the generated bins.

    Both outputs, the run and the prompt are checked before anything is sampled or written: a
    folder or a file in the way of either output, a prompt corpus binned at another width than
    the run's training corpus, or more prompt and generated tokens than the model's
    ``max_seq_len`` (naming the most that fit) is refused in one line. A generation longer than
    the context the model was trained on (``data.seq_len``; a Hugging Face folder's recorded
    training context) is allowed, with a warning: the later bins are sampled at positions the
    model never saw in training.

    ``device``: "cpu" (default; the same seed gives the same spikes on every machine), "cuda"
    (decoding through one CUDA graph per token, see :func:`~spikefm.families.ar.model.generate`)
    or "auto" (cuda when available). The random stream differs between devices.

    ``progress``: a progress bar of the bins generated (on a terminal).

    Returns the written paths.
    """
    from spikefm.families.ar.family import ARFamily, _check_bin_width
    from spikefm.progress import progress_bar
    from spikefm.families.ar.model import Llama, check_generation_context, generate
    from spikefm.families.ar.tokens import detokenize, tokenize
    from spikefm.train.dist import resolve_device_type

    out, png = Path(out), Path(out).with_suffix(".png")
    for path in (out, png):  # both, before either is written (a refused .png left a new .npz)
        check_file_target(path)
    if png.exists() and not out.exists():  # not an earlier generate's pair (--out as given: G.NPZ too)
        raise ValueError(f"{png} exists and is not the raster of an earlier spikefm generate (no "
                         f"{out.name} beside it); nothing was written: move it or choose another --out")
    device = resolve_device_type(device, option="--device")
    model, cfg = ARFamily().load(str(run_dir), device=device)
    if not isinstance(model, Llama):
        raise ValueError(f"{run_dir}: generation needs an autoregressive (ar) model")
    prompt_tokens, arrays = None, {}
    bin_ms = 0
    if prompt:
        def same_bins(corpus):  # as eval refuses it: the model read counts of its training width
            _check_bin_width(run_dir, cfg.data.corpus if cfg is not None else None, corpus, model=model,
                             fix="prompt it from a corpus built with --bin-ms {bin_ms}")

        p_counts, real, bin_ms = _prompt_counts(prompt, prompt_bins, num_bins, check_corpus=same_bins)
        if p_counts.shape[0] != num_units:
            raise ValueError(f"--units {num_units} does not match the {p_counts.shape[0]} units of the prompt "
                             f"({':'.join(prompt.rsplit(':', 2)[1:])}); pass --units {p_counts.shape[0]}")
        prompt_tokens = torch.from_numpy(tokenize(p_counts).astype(np.int64))[None]
        arrays["prompt"] = p_counts
        if real is not None:
            arrays["real"] = real
    fed = check_generation_context(model.cfg, num_units, num_bins,
                                   0 if prompt_tokens is None else prompt_tokens.shape[1])
    trained = cfg.data.seq_len if cfg is not None else getattr(model, "train_seq_len", None)
    if trained and fed > trained:
        width = num_units + 1
        within = (trained + 1) // width - (0 if prompt_tokens is None else prompt_tokens.shape[1] // width)
        what = "data.seq_len" if cfg is not None else "the training context its config.json records"
        warnings.warn(f"generation reads {fed:,} tokens of context, more than the {trained:,} the model was trained "
                      f"on ({what}): bins past that are sampled at positions it never saw"
                      + (f"; --bins {within} or fewer stay within it" if within >= 1 else
                         "; a shorter prompt and fewer bins stay within it" if prompt_tokens is not None else
                         f"; not one bin of {num_units} units fits in it: fewer --units would"),
                      PastTrainedContext, stacklevel=2)
    gen = torch.Generator(device=device).manual_seed(seed)
    with progress_bar(num_bins, "generating bins", enabled=progress) as bar:
        tokens = generate(model, num_units, num_bins, prompt_tokens=prompt_tokens,
                          temperature=temperature, top_k=top_k, generator=gen, on_bin=bar.advance)
    counts = detokenize(tokens[0].cpu().numpy(), num_units)
    arrays["counts"] = counts
    bin_ms = bin_ms or getattr(model, "train_bin_ms", None) or _run_bin_ms(cfg)  # the width it was trained on
    if bin_ms:  # the bin width of the counts, for the report's time axis
        arrays["bin_ms"] = np.asarray(bin_ms, dtype=np.int32)
    out = savez_atomic(out, compressed=True, **arrays)
    _raster(arrays, png)
    return [out, png]


def _raster(arrays: dict, png: Path) -> None:
    """Draw the raster with matplotlib's object API on an Agg canvas: the global backend (a
    notebook's, say) is left as it is."""
    from spikefm.corpus.plots import new_figure

    panels = [("generated", arrays["counts"])]
    if "real" in arrays:
        panels.insert(0, ("real (after the prompt)", arrays["real"]))
    vmax = max(1, max(int(a.max()) if a.size else 1 for _, a in panels))
    fig = new_figure(5 * len(panels), 4)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, a) in zip(axes[0], panels):
        im = ax.imshow(a, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=vmax)
        ax.set_title(title)
        ax.set_xlabel("time bin")
        ax.set_ylabel("unit")
    fig.colorbar(im, ax=axes[0].tolist(), label="spike count")
    write_atomic(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
