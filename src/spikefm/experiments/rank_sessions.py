"""Session ranking (Jiang et al. 2025): which pretraining sessions help a held-out session most?

For every pretraining session one single-session model is pretrained (masking scheme
``settings.schemes``; the paper uses forward-prediction masking, here the NDT ``causal`` scheme).
Then, for each held-out session and each of those models, the core is frozen and new session
parameters (read-in, read-out, session embedding) are trained on the held-out session's train
windows with early stopping on its validation windows. A pretraining session's score for a
held-out session is minus the best validation loss (for the NDT the masked Poisson NLL per scored
entry, the same entries and masks for every core, so the order is that of bits per spike on those
entries; for NEDS its validation loss, the weighted sum of spike Poisson NLL, behaviour MSE and label
cross-entropy over its validation schemes). Test windows are never looked at.

    spikefm experiment rank-sessions --data CORPUS --held-out S1,S2 --out DIR

writes ``DIR/ranking.json`` (study JSON: per held-out session the ranked sessions with scores,
the top-k overlap between held-out sessions, and, for ``spikefm synth`` corpora, each session's
ground-truth family and the precision@k of own-family sessions), ``DIR/ranking_<session>.csv``,
``DIR/topk_overlap.csv`` and ``DIR/ranking.png``. Every model is a job
(:mod:`spikefm.experiments.jobs`) under ``DIR/jobs``: re-running resumes. Job specs and the study
settings record the sha256 of the corpus's ``manifest.json``: a corpus rebuilt at the same path is
new jobs, and a study folder made on the old one is refused.
"""
from __future__ import annotations

import csv
import io
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from spikefm.experiments.jobs import Job, make_job, run_jobs, study_folder
from spikefm.train.config import override_key

__all__ = ["StudySettings", "LAPTOP", "study_sessions", "pretrain_job", "adapt_job", "ranking_jobs",
           "summarize_ranking", "rank_sessions", "session_families", "precision_at_k", "write_csv",
           "ranking_settings", "warn_top_k"]


#: The NDT's pretraining schemes in a study (the paper's forward-prediction masking).
NDT_STUDY_SCHEMES = "causal"


#: ``--set`` keys a ranking or scaling study sets in each pretraining run, and what to use instead.
STUDY_KEYS = {
    "train.steps": "give --pretrain-steps instead",
    "train.seed": "give --seed (rank-sessions) or --seeds (scaling) instead",
    "data.sessions": "give --pretrain-sessions and --held-out instead",
    "data.corpus": "give --data instead",
    "train.device": "give --device instead",
    "train.eval_every": "its pretraining runs do not validate (fine-tuning does: --eval-every)",
    "train.ckpt_every": "its pretraining runs keep no checkpoints (an interrupted job is run again whole)",
}


@dataclass(frozen=True)
class StudySettings:
    """Settings shared by the ranking and scaling studies (each run's spec holds them).

    Attributes:
        family: a masked family with per-session parameters (``ndt``).
        preset: model size preset of the family.
        schemes: masking schemes of every pretraining run (``data.schemes``; empty: the family's
            default; None, the default: ``causal`` for the NDT, the paper's forward-prediction
            masking, and the family's default for another family).
        pretrain_steps: optimizer steps of each pretraining run.
        finetune_steps, eval_every, patience: fine-tuning maximum steps, steps between validations,
            validations without improvement before stopping.
        finetune_lr: learning rate of fine-tuning (only the new session parameters train, so a
            higher rate than pretraining's converges sooner); None = the pretraining run's.
        overrides: further ``section.key=value`` settings of the pretraining runs.
        protocol: a named protocol of the family (e.g. ``jiang2025``), applied before ``overrides``.
        device: ``cpu`` or ``cuda``.
    """

    family: str = "ndt"
    preset: str = "tiny"
    schemes: str | None = None
    pretrain_steps: int = 600
    finetune_steps: int = 300
    eval_every: int = 50
    patience: int = 3
    finetune_lr: float | None = 1e-2
    overrides: tuple[str, ...] = ()
    protocol: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.schemes is None:  # the NDT's scheme names mean nothing to another family
            object.__setattr__(self, "schemes", NDT_STUDY_SCHEMES if self.family == "ndt" else "")
        for name in ("pretrain_steps", "finetune_steps", "eval_every", "patience"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        lr = self.finetune_lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1):
            raise ValueError(f"finetune_lr must be a number in (0, 1) or None, got {lr!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if not isinstance(self.overrides, tuple):
            object.__setattr__(self, "overrides", tuple(self.overrides))
        for item in self.overrides:  # keys the study sets in every pretraining run (they won silently)
            key = override_key(item)
            if key in STUDY_KEYS:
                raise ValueError(f"--set {item}: the study sets {key} of every pretraining run itself; "
                                 f"{STUDY_KEYS[key]}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["overrides"] = list(self.overrides)
        return d


#: The laptop-scale defaults (tiny models, CPU), what the commands run without flags.
LAPTOP = StudySettings()


def study_sessions(corpus_dir: str | Path, held_out: Sequence[str] | None,
                   pool: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(held-out sessions, pretraining sessions) of a corpus.

    ``held_out`` None = the corpus's test-split sessions. ``pool`` None = every other session of
    the corpus, in the manifest's order. Each is a list of session ids or one comma-separated
    string of them.

    Raises:
        ValueError: an unknown session, one given twice, a session in both lists, or an empty list.
    """
    from spikefm.corpus.reader import Corpus
    from spikefm.experiments.jobs import name_list

    held_out = name_list(held_out, "--held-out", "SESSION1,SESSION2") if held_out else None  # a string: one
    pool = name_list(pool, "--pretrain-sessions", "SESSION3,SESSION4") if pool else None  # session, not letters
    corpus = Corpus(corpus_dir)
    everything = corpus.session_ids()
    held = list(held_out) if held_out else corpus.session_ids("test")
    if not held:
        raise ValueError(f"{corpus_dir} has no test-split session to hold out; pass --held-out SESSION,... "
                         f"(sessions: {', '.join(everything[:6])}{'...' if len(everything) > 6 else ''})")
    pretrain = list(pool) if pool else [s for s in everything if s not in held]
    for name, ids in (("--held-out", held), ("--pretrain-sessions", pretrain)):
        unknown = [s for s in ids if s not in everything]
        if unknown:
            raise ValueError(f"{name}: session {unknown[0]!r} is not in {corpus_dir} (sessions: "
                             f"{', '.join(everything[:6])}{'...' if len(everything) > 6 else ''})")
    both = sorted(set(held) & set(pretrain))
    if both:
        raise ValueError(f"session {both[0]!r} is both held out and a pretraining session; a held-out "
                         "session must never be pretrained on")
    if not pretrain:
        raise ValueError(f"{corpus_dir} has no session left to pretrain on after holding out {','.join(held)}")
    return held, pretrain


def ranking_settings(settings: StudySettings, corpus: str | Path, corpus_sha256: str, held: Sequence[str],
                     pool: Sequence[str], seed: int, top_k: int) -> dict[str, Any]:
    """The settings a ranking records in ``ranking.json`` (``rank-sessions``, and ``scaling``'s own
    ranking: the same rank-sessions command then resumes in a scaling study's folder)."""
    return {**settings.to_dict(), "seed": seed, "top_k": top_k, "corpus": str(Path(corpus).resolve()),
            "corpus_sha256": corpus_sha256, "held_out": held, "pretraining_sessions": pool}


def warn_top_k(top_k: int, num_pool: int, flag: str) -> None:
    """Warn when ``top_k`` exceeds the pretraining sessions (:func:`summarize_ranking` reports
    precision at the pool's size then); ``flag`` names the option in the warning."""
    if top_k > num_pool:
        warnings.warn(f"{flag} {top_k}: only {num_pool} pretraining session(s); precision@{num_pool} and the "
                      f"top-{num_pool} overlap are reported instead", RuntimeWarning, stacklevel=2)


def pretrain_job(settings: StudySettings, corpus: str, sessions: Sequence[str], seed: int, *,
                 corpus_sha256: str | None = None) -> Job:
    """The pretraining run on ``sessions`` (sorted: the order of a set does not matter).
    ``corpus_sha256``: of the corpus's ``manifest.json`` (None: read it now), in the spec so that
    a corpus rebuilt at the same path makes new jobs."""
    from spikefm.corpus.reader import manifest_sha256

    sessions = sorted(sessions)
    spec = {"family": settings.family, "corpus": str(Path(corpus).resolve()),
            "corpus_sha256": corpus_sha256 or manifest_sha256(corpus), "sessions": sessions,
            "preset": settings.preset, "steps": settings.pretrain_steps, "seed": int(seed),
            "overrides": [*([f"data.schemes={settings.schemes}"] if settings.schemes else []), *settings.overrides],
            "protocol": settings.protocol, "device": settings.device}
    label = f"pretrain {sessions[0]}" if len(sessions) == 1 else f"pretrain {len(sessions)} sessions"
    return make_job("pretrain", spec, label=f"{label} seed {seed}")


def adapt_job(settings: StudySettings, pre: Job, session: str, *, evaluate: bool = False,
              tasks: Sequence[str] | None = None, baselines: bool = False, scratch: bool = False) -> Job:
    """Fine-tuning of ``pre``'s core (frozen) to ``session`` or, with ``scratch``, the
    single-session model with ``pre``'s settings and seed; ``evaluate`` adds the test benchmark."""
    spec = {"pretrain": pre.id, "corpus": pre.spec["corpus"], "corpus_sha256": pre.spec["corpus_sha256"],
            "session": session,
            "steps": settings.finetune_steps, "eval_every": settings.eval_every, "patience": settings.patience,
            # the single-session model trains everything: the pretraining run's learning rate
            "lr": None if scratch else settings.finetune_lr, "seed": pre.spec["seed"],
            "evaluate": bool(evaluate), "tasks": list(tasks) if tasks else None,
            "baselines": bool(baselines)}
    if scratch:
        return make_job("single", spec, deps=[pre.id], label=f"single-session {session} seed {pre.spec['seed']}")
    spec["strategy"] = "frozen"
    return make_job("finetune", spec, deps=[pre.id], label=f"frozen core of {pre.label} -> {session}")


def ranking_jobs(settings: StudySettings, corpus: str, held: Sequence[str], pool: Sequence[str],
                 seed: int, *, corpus_sha256: str | None = None) -> tuple[list[Job], dict[tuple[str, str], Job]]:
    """Every job of a ranking, and (held-out, pretraining session) -> its fine-tuning job."""
    from spikefm.corpus.reader import manifest_sha256

    digest = corpus_sha256 or manifest_sha256(corpus)
    jobs: list[Job] = []
    adapt: dict[tuple[str, str], Job] = {}
    for s in pool:
        pre = pretrain_job(settings, corpus, [s], seed, corpus_sha256=digest)
        jobs.append(pre)
        for h in held:
            adapt[(h, s)] = adapt_job(settings, pre, h)
            jobs.append(adapt[(h, s)])
    return jobs, adapt


def session_families(corpus_dir: str | Path, sessions: Sequence[str]) -> dict[str, int | str] | None:
    """Ground-truth family of each session of a ``spikefm synth`` corpus (its ``.truth.npz``
    beside the NWB file the manifest names), or None when any session has no truth file or (with
    a warning) its NWB file changed since the corpus was built (the truth is another recording's).

    A family is one of one ``spikefm synth`` run: family 0 of another preset, seed or number of
    families has other dynamics. Sessions of one run: the family's number (an int). Sessions of
    several runs: ``"<preset> seed <seed> family <f> of <K>"`` (a str), so that equal labels are
    equal families. A truth file without preset, seed or number of families (an older one) counts
    those as unknown, i.e. the same as any other's unknown."""
    import numpy as np

    from spikefm.corpus.reader import Corpus
    from spikefm.eval.oracle import truth_file_of_session

    def item(z, name: str):
        return z[name].item() if name in z.files else None

    corpus = Corpus(corpus_dir)
    keys = {}
    for s in sessions:
        truth = truth_file_of_session(corpus.session(s), use="ground-truth families")  # None: regenerated since
        if truth is None:
            return None
        with np.load(truth) as z:
            keys[s] = (item(z, "preset"), item(z, "seed"), item(z, "num_families"), int(z["family"]))
    if len({k[:3] for k in keys.values()}) == 1:
        return {s: k[3] for s, k in keys.items()}
    return {s: f"{p} seed {seed} family {f} of {n}" for s, (p, seed, n, f) in keys.items()}


def precision_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Fraction of the first ``k`` of ``ranked`` that are in ``relevant`` (k capped at the list)."""
    top = list(ranked)[:k]
    if not top:
        raise ValueError("precision_at_k needs a non-empty ranking")
    return sum(1 for s in top if s in relevant) / len(top)


def summarize_ranking(records: dict[str, dict], adapt: dict[tuple[str, str], Job], held: Sequence[str],
                      pool: Sequence[str], families: dict[str, int | str] | None, top_k: int = 3) -> dict[str, Any]:
    """Rankings from the fine-tuning jobs' results: per held-out session, the pretraining sessions
    by score (minus best validation loss; ties by session id), the top-k overlap between held-out
    sessions and, with ground-truth families, the precision@k of own-family sessions."""
    rankings: dict[str, list[dict]] = {}
    for h in held:
        rows = [{"session": s, "score": -records[adapt[(h, s)].id]["result"]["best_val_loss"],
                 "val_loss": records[adapt[(h, s)].id]["result"]["best_val_loss"],
                 "best_step": records[adapt[(h, s)].id]["result"]["best_step"]} for s in pool]
        rows.sort(key=lambda r: (-r["score"], r["session"]))
        for i, r in enumerate(rows, 1):
            r["rank"] = i
            if families is not None:
                r["family"] = families[r["session"]]
                r["same_family"] = families[r["session"]] == families[h]
        rankings[h] = [{k: r[k] for k in ("rank", "session", "score", "val_loss", "best_step", "family",
                                          "same_family") if k in r} for r in rows]
    k = min(top_k, len(pool))
    overlap = {}
    for i, a in enumerate(held):
        for b in held[i + 1:]:
            ta = {r["session"] for r in rankings[a][:k]}
            tb = {r["session"] for r in rankings[b][:k]}
            overlap[f"{a} | {b}"] = {"shared": len(ta & tb), "k": k, "jaccard": len(ta & tb) / len(ta | tb)}
    out: dict[str, Any] = {"top_k": k, "rankings": rankings, "top_k_overlap": overlap}
    if families is not None:
        prec = {}
        for h in held:
            own = {s for s in pool if families[s] == families[h]}
            ranked = [r["session"] for r in rankings[h]]
            # the best possible precision@k when fewer than k sessions share the family
            prec[h] = {"family": families[h], "own_family_sessions": len(own),
                       f"precision_at_{k}": precision_at_k(ranked, own, k),
                       "ceiling": min(len(own), k) / k}
        out["ground_truth"] = {"families": families, "precision": prec,
                               f"mean_precision_at_{k}": sum(p[f"precision_at_{k}"] for p in prec.values()) / len(prec)}
    return out


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A CSV file written atomically."""
    from spikefm.fileio import write_atomic

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    text = buf.getvalue()
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_ranking_files(out: Path, summary: dict) -> None:
    for h, rows in summary["rankings"].items():
        cols = [c for c in ("rank", "session", "score", "val_loss", "best_step", "family", "same_family")
                if c in rows[0]]
        write_csv(out / f"ranking_{h}.csv", cols, [[r[c] for c in cols] for r in rows])
    write_csv(out / "topk_overlap.csv", ["held_out_pair", "shared", "k", "jaccard"],
              [[pair, v["shared"], v["k"], v["jaccard"]] for pair, v in summary["top_k_overlap"].items()])


def print_ranking(summary: dict) -> None:
    from spikefm.tables import render_table

    k = summary["top_k"]
    for h, rows in summary["rankings"].items():
        cols = ["rank", "session", "score"] + (["family"] if "family" in rows[0] else [])
        print(render_table(cols, [[r[c] for c in cols] for r in rows], title=f"pretraining sessions ranked for {h}"))
    gt = summary.get("ground_truth")
    if gt:
        rows = [[h, p["family"], p["own_family_sessions"], p[f"precision_at_{k}"], p["ceiling"]]
                for h, p in gt["precision"].items()]
        print(render_table(["held out", "family", "own-family sessions", f"precision@{k}", "ceiling"], rows,
                           title="ground truth: own-family sessions ranked first"))


#: The settings of a session ranking, written before its first job (hidden: not a result), by
#: ``rank-sessions`` and by a scaling study (whose first stage is that ranking).
RANKING_STARTED = ".ranking_settings.json"


def rank_sessions(out: str | Path, corpus: str | Path, held_out: Sequence[str] | None = None, *,
                  pool: Sequence[str] | None = None, settings: StudySettings = LAPTOP, seed: int = 0,
                  top_k: int = 3, executor=None, progress: bool = True, command: str | None = None
                  ) -> dict[str, Any]:
    """Run (or resume) a session ranking and write its files (module docstring).

    Args:
        out: study folder.
        corpus: corpus folder.
        held_out: held-out sessions (None: the corpus's test split).
        pool: pretraining sessions (None: every other session).
        settings: model, masking and step settings.
        seed: training seed of every run.
        top_k: k of the top-k overlap and precision@k.
        executor: from :func:`spikefm.experiments.jobs.make_executor` (None: one local worker).
        progress: progress display.
        command: the command line to record.

    Returns:
        The study JSON written to ``OUT/ranking.json``.
    """
    from spikefm.corpus.reader import manifest_sha256
    from spikefm.experiments.jobs import LocalExecutor, check_study_folder, check_study_settings
    from spikefm.experiments.plots import plot_ranking
    from spikefm.experiments.runs import check_held_out_validation, check_pretrain_spec
    from spikefm.fileio import write_json_atomic
    from spikefm.train.runinfo import machine_info

    out = Path(out)
    check_study_folder(out)
    from spikefm.families import require_finetuning, require_session_choice

    require_finetuning(settings.family, "a session ranking needs")  # before its settings are read as the family's
    require_session_choice(settings.family, "a session ranking needs (one pretraining run per session)")
    held, pool = study_sessions(corpus, held_out, pool)
    warn_top_k(top_k, len(pool), "--top-k")
    digest = manifest_sha256(corpus)
    jobs, adapt = ranking_jobs(settings, str(corpus), held, pool, seed, corpus_sha256=digest)
    check_held_out_validation(check_pretrain_spec(jobs[0].spec, executor), held)  # before any folder or job
    study_settings = ranking_settings(settings, corpus, digest, held, pool, seed, top_k)
    check_study_settings(out / "ranking.json", study_settings, views=("top_k",))
    # an unfinished ranking (this study's, or a scaling study's first stage) binds the folder too:
    # another ranking into it left the interrupted study unable to resume there
    check_study_settings(out / RANKING_STARTED, study_settings, views=("top_k",))
    executor = executor or LocalExecutor(1)
    t0 = time.perf_counter()
    with study_folder(out, executor):  # the executor first, then the folder
        write_json_atomic(out / RANKING_STARTED, {"settings": study_settings})
        records = run_jobs(jobs, out / "jobs", executor, progress=progress, description="ranking sessions")
        families = session_families(corpus, [*held, *pool])
        summary = summarize_ranking(records, adapt, held, pool, families, top_k)
        study = {"study": "rank-sessions", "command": command or " ".join(sys.argv),
                 "settings": study_settings,
                 **summary, "jobs": len({j.id for j in jobs}),
                 "job_wall_s": round(sum(records[j.id]["timings"]["wall_s"] for j in jobs), 1),
                 "wall_s": round(time.perf_counter() - t0, 1), "machine": machine_info()}
        write_ranking_files(out, summary)
        plot_ranking(summary, out / "ranking.png")
        write_json_atomic(out / "ranking.json", study)
    return study
