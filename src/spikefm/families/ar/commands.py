"""Sub-commands of the autoregressive family: ``spikefm ngram`` and ``spikefm generate``.

Torch-free at import (the CLI builds its parser from :data:`COMMANDS` without importing models).
"""
from __future__ import annotations

import argparse

from spikefm.argtypes import finite_float as _finite_float
from spikefm.argtypes import positive_int as _positive_int
from spikefm.argtypes import torch_seed
from spikefm.families import FamilyCommand
from spikefm.fileio import check_output_file, check_results_file
from spikefm.progress import QUIET_HELP

__all__ = ["COMMANDS"]


def _ngram_arguments(n: argparse.ArgumentParser) -> None:
    n.add_argument("--data", required=True, help="corpus folder")
    n.add_argument("--order", type=int, choices=range(1, 10), required=True, metavar="N",
                   help="n-gram order, 1..9")
    n.add_argument("--alpha", type=_finite_float, default=1.0, help="Laplace smoothing constant")
    n.add_argument("--split", default="test", choices=["train", "test"])
    n.add_argument("--max-train-tokens", type=_positive_int, default=None,
                   help="fit on the train split's first rows up to this many tokens (default: all of it)")
    n.add_argument("--max-tokens", type=_positive_int, default=None,
                   help="score only the split's first rows, cut at whole bins once this many tokens are "
                        "reached (default: all of it)")
    n.add_argument("--out", default=None, help="results.json")
    n.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def _run_ngram(args) -> int:
    from spikefm.corpus.reader import Corpus
    from spikefm.families.ar.evaluate import (evaluate_ngram, evaluate_oracle, fit_ngram, require_rows,
                                              write_results)
    from spikefm.families.ar.xent import format_table

    if args.alpha <= 0:
        raise ValueError(f"--alpha must be > 0 (Laplace smoothing), got {args.alpha}")
    if args.out:
        check_output_file(args.out, (".json",), "--out")  # before the fit, which can take long
        check_results_file(args.out, "--out", "the results of an earlier spikefm ngram",
                           lambda obj: "order" in obj and "results" in obj and "family" not in obj)
    corpus = Corpus(args.data)
    require_rows(corpus, args.split)  # before the fit, which can take long
    ng = fit_ngram(corpus, args.order, alpha=args.alpha, max_train_tokens=args.max_train_tokens,
                   progress=not args.quiet)
    results = {f"{args.order}-gram": evaluate_ngram(ng, corpus, split=args.split,
                                                    max_tokens=args.max_tokens)}
    oracle = evaluate_oracle(corpus, split=args.split, max_tokens=args.max_tokens)
    if oracle is not None:
        results["oracle"] = oracle
    print(format_table(results, title=f"cross-entropy on {args.split} (bits/token)"))
    if args.out:
        write_results(args.out, {"corpus": str(corpus.path.resolve()), "order": args.order,
                                 "alpha": args.alpha, "split": args.split, "max_tokens": args.max_tokens,
                                 "max_train_tokens": args.max_train_tokens, "results": results})
    return 0


def _generate_arguments(g: argparse.ArgumentParser) -> None:
    g.add_argument("run_dir", help="autoregressive run folder or Hugging Face Llama folder")
    g.add_argument("--units", type=_positive_int, required=True,
                   help="units per bin (with --prompt: that session's unit count)")
    g.add_argument("--bins", type=_positive_int, required=True,
                   help="bins to generate; each is units + 1 tokens, and prompt and generated tokens "
                        "together must fit the model's max_seq_len (8192 for every preset)")
    g.add_argument("--prompt", default=None, metavar="CORPUS_DIR:SESSION_ID:START_BIN",
                   help="real bins to start from: a session of a corpus binned like the run's, from its bin "
                        "START_BIN (default: generate from nothing)")
    g.add_argument("--prompt-bins", type=_positive_int, default=None,
                   help="bins of --prompt that start the generation (default 25)")
    g.add_argument("--temperature", type=_finite_float, default=1.0,
                   help="softmax temperature (default 1.0; 0 = greedy: always the most likely count)")
    g.add_argument("--top-k", type=_positive_int, default=None,
                   help="sample only among the K most likely counts (default: all of them)")
    g.add_argument("--seed", type=torch_seed, default=0, help="sampling seed (default 0)")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="where to sample (default cpu: the same seed gives the same spikes on "
                        "every machine; cuda decodes through one CUDA graph per token, much "
                        "faster for large models; auto = cuda when available)")
    g.add_argument("--out", required=True, help="FILE.npz (a raster FILE.png is written beside it)")
    g.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def _run_generate(args) -> int:
    from spikefm.families.ar.generation import generate_to_file

    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.prompt_bins is not None and args.prompt is None:
        raise ValueError(f"--prompt-bins {args.prompt_bins} applies to a --prompt "
                         "(CORPUS_DIR:SESSION_ID:START_BIN, the recording that starts the generation); "
                         "give one, or drop --prompt-bins to generate from nothing")
    check_output_file(args.out, (".npz",), "--out")
    out = generate_to_file(args.run_dir, num_units=args.units, num_bins=args.bins,
                           prompt=args.prompt, prompt_bins=25 if args.prompt_bins is None else args.prompt_bins,
                           temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                           device=args.device, out=args.out, progress=not args.quiet)
    for p in out:
        print(f"wrote {p}")
    return 0


COMMANDS = [
    FamilyCommand("ngram", "fit and score an n-gram baseline of the spike tokens (Laplace smoothing)",
                  _ngram_arguments, _run_ngram),
    FamilyCommand("generate", "sample spike arrays from an autoregressive model (KV cache)",
                  _generate_arguments, _run_generate),
]
