"""Mutation testing of the numerical core with mutmut (opt-in; never part of the test suite).

    pip install mutmut
    nice -n 19 python benchmarks/mutation/run_mutation.py                  # every module below
    nice -n 19 python benchmarks/mutation/run_mutation.py --modules tokens,ngram --max-children 1

Each module is mutated in a scratch copy of the repository (``--work``, default a temporary
folder; the checkout itself is never written), with mutmut's own configuration appended to the
copy's pyproject.toml, and is tested by its own FAST test files only (the ``slow``, ``gpu`` and
``distributed`` tests and the tests that start subprocesses are left out: a subprocess imports
the installed, unmutated package, so it could not kill a mutant anyway). mutmut runs, for each
mutant, the tests that call the mutated function.

Writes ``benchmarks/results/mutation.json`` (``--out``): per module the killed / survived /
timeout counts (mutmut's "no tests", a mutant in code no selected test reaches, counts as
survived) and the score (killed + timeout over killed + timeout + survived), each surviving
mutant with its diff, and, for the survivors judged equivalent (no test could tell them from the
original), a one-line note from :data:`EQUIVALENT_RULES`; plus what was run (command, modules, test
files, mutmut version, machine, seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: short name -> (file to mutate, its fast test files, pytest -k expression, process isolation).
#: Modules whose tests import torch use mutmut's fork server (torch is not fork-safe after use).
MODULES: dict[str, dict] = {
    "metrics": {"path": "src/spikefm/eval/metrics.py",
                "tests": ["tests/test_metrics.py", "tests/test_mutation_metrics.py"],
                "isolation": "fork"},
    "binning": {"path": "src/spikefm/corpus/binning.py",
                "tests": ["tests/test_corpus_binning.py", "tests/test_mutation_binning.py"],
                "isolation": "fork"},
    "tokens": {"path": "src/spikefm/families/ar/tokens.py", "tests": ["tests/test_tokens.py"],
               "isolation": "fork"},
    "ngram": {"path": "src/spikefm/families/ar/ngram.py", "tests": ["tests/test_ngram.py"],
              "isolation": "fork"},
    "masking": {"path": "src/spikefm/families/ndt/masking.py",
                "tests": ["tests/test_masking.py", "tests/test_mutation_masking.py"],
                "isolation": "forkserver"},
    "checkpoint": {"path": "src/spikefm/train/checkpoint.py",
                   "tests": ["tests/test_mutation_checkpoint.py", "tests/test_faults_model_folders.py",
                             "tests/test_faults_checkpoint.py"],
                   "k": "not kill_9",
                   "isolation": "forkserver"},
}

#: Survivors judged equivalent (no test can tell them from the original), as rules
#: (module, function, text of the mutated line, why): a surviving mutant of that function whose
#: changed ("+") line contains the text gets the note. Rules match on the code, not on mutmut's
#: mutant numbers, so they survive edits elsewhere in the file.
_NEG2 = "reshape with -2 = with -1: numpy >= 2 infers a dimension given as any negative number"
_MASKED = "the value at non-evaluated entries is only read through np.where(evaluated, ..., 0)"
_DIV = ("the division here is 0 / 0 (invalid) or by a nonzero count, never nonzero / 0, so divide= "
        "has no effect")
_NAN = 'float("NAN") is the same NaN as float("nan")'
_THREADS = "threadpool limits change speed, not results"
_COPY = "copy= changes memory sharing, not values"
_FRAME = ("not observable under mutmut: its trampoline adds a stack frame, so stacklevel 3 lands on the "
          "test's line as stacklevel 2 does without mutmut (the test checks the warning is not "
          "attributed to metrics.py)")
_CLONE = ("cloning more (or other) tensors than needed still leaves no two saved tensors sharing "
          "memory for tied pairs (the only ties these models have): the file is the same")
_PATH = "chooses between the run-length path for ordered cells and the general sorting path; both give the same counts"
_FILTER = "filters spikes against the time range more often than needed: a no-op when none is outside"
_NEAR = "the edge correction is exact for every spike it is applied to; flagging more spikes changes speed, not counts"
_CLIP = ("idx <= num_bins always (t < edges[-1]) and the correction uses edges[k + 1], which exists for "
         "k = num_bins - 1 and k = num_bins alike: the clip bounds never change a count")
_EMPTY = "only reached for an empty row, whose windows and scores are empty either way"
_FLUSH = "flush= changes the buffering of the progress line, not its text"
_DIST = ("differs only with several processes; the two-process tests run the installed, unmutated "
         "package in torchrun subprocesses, so mutmut cannot reach it")
_ZERO = "a 0-d float32 zero does not change the dtype of torch.where with float tensors"
_CPU = ("device placement: equivalent on this CPU-only test machine (everything is on the CPU); a "
        "GPU test could tell it apart")
#: One rule a line: module | function ("*" = any) | text found in a changed line of the mutant
#: (removed or added) | why (or =NAME of a note above). Parsed by :func:`_rules`.
_RULES_TABLE = """
tokens | detokenize | reshape(-2 | =_NEG2
ngram | _as_token_row | vocab_size <= VOCAB_SIZE | a uint8 row always lies in 0..255: the range check only costs time
ngram | * | copy=None | =_COPY
ngram | * | copy=True | =_COPY
ngram | * | np.uint8, ) | =_COPY
ngram | * | np.int64, ) | =_COPY
ngram | * | np.uint64, ) | =_COPY
ngram | _count_order9_packed | for i in range(8) | bit 63 is never set by the 7-bit spread, so an 8th pass adds nothing
ngram | _count_order9_packed | hi = hi.astype(None) | hi (< 256) only orders and buckets the table: its float copy is exact
ngram | _count_windows | bounds = np.array([0, n] | np.array of Python ints is int64 on 64-bit Linux
ngram | _count_windows | np.argsort(hi | each bucket is sorted afterwards: the order inside a bucket does not matter
ngram | _count_windows | run_start = np.empty(n | a float 0/1 mask works like a bool one in flatnonzero
ngram | _count_windows | run_start[0] = | run_start[0] is set again by the bucket starts (bounds[0] = 0)
ngram | _count_windows | counts.astype(None) | float64 counts are exact below 2**53 and become int64 in _set_tables
ngram | _subtract_windows | assert | an internal invariant whose assertion never fires
ngram | _window_keys | if n < 0: | n = 0 gives empty windows either way
ngram | _window_keys | np.empty( | =_EMPTY
ngram | _window_keys | if (order == MAX_ORDER) | =_EMPTY
ngram | _window_keys | if order != MAX_ORDER | =_EMPTY
ngram | _window_keys | np.ascontiguousarray(stream, | every caller passes a uint8 stream
ngram | _window_keys | if order <= 8 | for order 8 the mask is all ones
ngram | _window_keys | if order < 9 | for order 8 the mask is all ones
ngram | _lookup | keys.size + 1) | the all-separator context, the largest possible key, is in every fitted table, so searchsorted never returns keys.size
ngram | _lookup | (ci <= keys.size) | ci == keys.size gives ci_safe = keys.size - 1, whose key differs from ctx
ngram | _lookup | (pi <= codes.size) | pi == codes.size gives pi_safe = codes.size - 1, whose code differs
ngram | _set_tables | np.arange(256, | hi only feeds .astype(np.uint64)
ngram | _set_tables | new_ctx = np.empty(keys.size | a float 0/1 mask works in flatnonzero and cumsum
ngram | fit | flush= | =_FLUSH
ngram | fit | flush=True, | =_FLUSH
ngram | fit | np.full(k, _PAD_TOKEN, | the padded stream is read as uint8 when windows are packed
ngram | log_prob | np.full(k, _PAD_TOKEN, | the padded stream is read as uint8 when windows are packed
ngram | get_params | deep: bool = False | deep is unused: the estimator holds no nested estimators
ngram | load | allow_pickle=None | allow_pickle=False is np.load's default
ngram | load | np.load(os.fspath(path), ) | allow_pickle=False is np.load's default
ngram | next_token_log_probs | reshape(1, -2) | =_NEG2
ngram | next_token_log_probs | np.arange(self.vocab_size, | the vocabulary only feeds .astype(np.uint64)
tokens | detokenize | .reshape(None) | reshape(None) keeps the shape and the next line's reshape(-1, width) reads it in the same (C) order
tokens | tokenize | reshape(-2) | =_NEG2
tokens | tokenize | "XXbiufXX" | dtype.kind is one character, never 'X': the same kinds
tokens | tokenize | "XXiuXX" | dtype.kind is one character, never 'X': the same kinds
tokens | tokenize | kind == "XXbXX" | bool counts then take the np.minimum branch: same 0/1 tokens
tokens | tokenize | kind == "B" | bool counts then take the np.minimum branch: same 0/1 tokens
tokens | tokenize | max < MAX_COUNT_TOKEN | no integer dtype has a maximum of exactly 254
metrics | _as_rates_counts | reshape(-2 | =_NEG2
metrics | _as_rates_counts | rates = np.where(evaluated, rates, 1.0) | =_MASKED
metrics | _ll_sums_per_neuron | reshape(-2) | =_NEG2
metrics | _ll_sums_per_neuron | counts_RN.shape), 1.0) | =_MASKED
metrics | _null_rates_per_neuron | divide=None | =_DIV
metrics | _null_rates_per_neuron | errstate(invalid="ignore", ) | =_DIV
metrics | bps_per_neuron_mean | float("NAN") | =_NAN
metrics | bps_pooled | float("NAN") | =_NAN
metrics | r2_score_pooled | float("NAN") | =_NAN
metrics | r2_score_pooled | reshape(-2 | =_NEG2
metrics | r2_score_pooled | divide=None | =_DIV
metrics | r2_score_pooled | errstate(invalid="ignore", ) | =_DIV
metrics | r2_score_pooled | np.where(evaluated, pred, 1.0) | =_MASKED
metrics | _drop_nan_rows | arr is not None or | differs only for arr=None, which no caller passes
metrics | _drop_nan_rows | -2) | =_NEG2
metrics | decode_continuous | -2) | =_NEG2
metrics | decode_continuous | splitter.split(X, None, groups) | GroupKFold.split ignores y
metrics | decode_continuous | threadpool_limits( | =_THREADS
metrics | decode_discrete | threadpool_limits( | =_THREADS
metrics | decode_discrete | np.bincount(y_int[train_idx], ) | every class has >= cv_folds samples (checked before), so every stratified training fold holds every class and minlength never matters
metrics | decode_discrete | scoring=None | scoring=None is the classifier's own score: accuracy
metrics | decode_discrete | max_iter=2001 | the fits converge long before 2000 iterations
binning | bin_edges_s | np.arange(num_bins + 1,  | np.arange of Python ints is int64 on 64-bit Linux
binning | bin_edges_s | dtype=None | np.arange of Python ints is int64 on 64-bit Linux
metrics | _poisson_logpmf | errstate(divide=None) | scipy's xlogy reports no floating-point warning for log(0) (its own error handling is off), so this errstate is redundant
metrics | bps_pooled | stacklevel=3 | =_FRAME
metrics | bps_per_neuron_mean | stacklevel=3 | =_FRAME
metrics | r2_score_pooled | stacklevel=3 | =_FRAME
metrics | decode_discrete | scoring="accuracy", | the default scoring of a classifier (its score method) is accuracy
metrics | decode_continuous | model[+1].alpha_ | the pipeline has two steps, so [1] is [-1]
binning | bin_spikes | if num_bins == 0 and spike_times.size == 0 | with no bins every spike is dropped in the loop, which checks units and NaN alike; with no spikes the loop does nothing
binning | bin_spikes | flat_out = out.reshape(-2) | =_NEG2
binning | bin_spikes | last_cell, monotone = | =_PATH
binning | bin_spikes | copy=None | =_COPY
binning | bin_spikes | copy=True | =_COPY
binning | bin_spikes | astype(np.int64, ) | =_COPY
binning | bin_spikes | if lo <= edges[0] or | =_FILTER
binning | bin_spikes | if lo < edges[1] or | =_FILTER
binning | bin_spikes | hi >= edges[+1] | =_FILTER
binning | bin_spikes | hi >= edges[-2] | =_FILTER
binning | bin_spikes | x += idx | =_NEAR
binning | bin_spikes | x += 0.5 | =_NEAR
binning | bin_spikes | x -= 1.5 | =_NEAR
binning | bin_spikes | np.abs(x, out=None) | =_NEAR
binning | bin_spikes | np.abs(x, ) | =_NEAR
binning | bin_spikes | >= 0.5 - 1e-6 | =_NEAR
binning | bin_spikes | 0.5 - 1.000001 | =_NEAR
binning | bin_spikes | np.clip(idx[near], None, num_bins - 1) | =_CLIP
binning | bin_spikes | np.clip(idx[near], 0, None) | =_CLIP
binning | bin_spikes | np.clip(idx[near], 1, num_bins - 1) | =_CLIP
binning | bin_spikes | np.clip(idx[near], 0, num_bins + 1) | =_CLIP
binning | bin_spikes | k -= tn <= edges[k] | a spike on edge k is moved to k - 1 and straight back by the next line (tn >= edges[k])
binning | bin_spikes | in_order = None | =_PATH
binning | bin_spikes | step.min() <= 0 | =_PATH
binning | bin_spikes | step.min() < 1 | =_PATH
binning | bin_spikes | if (in_order) and False | =_PATH
binning | bin_spikes | monotone = None | =_PATH
binning | bin_spikes | flat[0] > last_cell | =_PATH
binning | bin_spikes | np.zeros(0, dtype=None) | float zero-length counts are cast to uint8 on assignment
binning | bin_spikes | np.zeros(0, ) | float zero-length counts are cast to uint8 on assignment
binning | bin_spikes | last_cell = None | after the general path monotone stays False, so last_cell is never read again
masking | * | device=None | =_CPU
masking | * | .to(None) | =_CPU
masking | * | device = None | =_CPU
masking | * | dtype=torch.bool, ) | =_CPU
masking | * | dtype=torch.long, ) | =_CPU
masking | * | dtype=nll_BTN.dtype, ) | =_CPU
masking | * | dtype=log_rates_BTN.dtype, ) | =_CPU
masking | * | generator=generator, ) | =_CPU
masking | * | torch.arange(T, ) | =_CPU
masking | * | dtype=counts_BTN.dtype, )) | =_CPU
masking | mask_entries | B, None), | =_CPU
masking | mask_within_region | causal=False, | causal=False is mask_entries' default
masking | _as_causal_B | causal, dtype=None | torch.full infers bool from a bool fill value
masking | _as_causal_B | torch.full((B,), causal, device=device) | torch.full infers bool from a bool fill value
masking | _as_scheme_B | dtype=None | torch.full infers int64 from an int fill value
masking | _as_scheme_B | scheme_id(scheme), device=device) | torch.full infers int64 from an int fill value
masking | draw_schemes | dtype=None) | torch.tensor infers int64 from Python ints
masking | draw_schemes | _resolve_scheme_names(schemes)], ) | torch.tensor infers int64 from Python ints
masking | _random_subset | masked_fill(~candidates_BN, 3.0) | any fill above 1 sorts non-candidates last
masking | _pick_region | masked_fill(~first_BN, -2.0) | any negative fill is below every uniform score
masking | * | torch.zeros((), dtype=None | =_ZERO
masking | * | torch.zeros((), device=device) | =_ZERO
masking | * | gdev = None | =_CPU
masking | apply_masks | k_causal, dtype=None | torch.full infers int64 from an int fill value
masking | apply_masks | torch.full((B,), k_causal, device=device) | torch.full infers int64 from an int fill value
masking | apply_masks | if (T) or True else 0 | with T = 0 the expression gives 0 either way
masking | apply_masks | if T else 1 | only for T = 0 windows, where every causal mode selects no bin (or fails alike)
masking | apply_masks | clamp_max(max(k_causal + 1, 0)) | floor(u * k) <= k - 1 for u < 1: the clamp never acts
masking | apply_masks | clamp_max(max(k_causal - 1, 1)) | differs only for k = 1, where floor(u * 1) = 0 anyway
masking | masked_poisson_loss | targets_BTN.to(None) | poisson_nll_loss promotes integer targets to the input's dtype
masking | masked_poisson_loss | {name: 2.0 for name in SCHEMES} | scaling every weight alike cancels in sum(w L) / sum(w)
masking | masked_poisson_loss | targets_BTN, full=False | log_input=True is poisson_nll_loss's default
masking | masked_poisson_loss | log_input=True, reduction= | full=False is poisson_nll_loss's default
masking | mask_units | scheme=scheme, ) | causal=False is mask_entries' default
checkpoint | _load_safetensors | [:201] | a 201st character exists only for exception texts over 200 characters; safetensors' are shorter here
checkpoint | export_model | get_model_state_dict(model, options=None) | =_DIST
checkpoint | export_model | get_model_state_dict(model, ) | =_DIST
checkpoint | export_model | cpu_offload=None | =_CPU
checkpoint | export_model | cpu_offload=False | =_CPU
checkpoint | export_model | ptr = None | =_CLONE
checkpoint | export_model | if (ptr in seen) or True | =_CLONE
checkpoint | export_model | if ptr not in seen | =_CLONE
checkpoint | read_safetensors_header | raw.decode("UTF-8") | codec names are case-insensitive
checkpoint | _digest | f.read( | the read size changes memory use, not the hash
checkpoint | _remove_leftovers | shutil.rmtree(p, | deleting a leftover folder this process owns does not fail here
checkpoint | _state_dict_options | StateDictOptions( | =_DIST
checkpoint | save_checkpoint | get_state_dict(model, optimizer, options=None) | =_DIST
checkpoint | save_checkpoint | get_state_dict(model, optimizer, ) | =_DIST
checkpoint | save_checkpoint | cpu_offload=None | =_CPU
checkpoint | save_checkpoint | cpu_offload=False | =_CPU
checkpoint | save_checkpoint | root.mkdir( | the run folder exists whenever a checkpoint is saved, so parents= never matters
checkpoint | rng_state | cuda | =_CPU
checkpoint | read_json_file | encoding=None | the locale's encoding is UTF-8 on this machine
checkpoint | read_json_file | with open(path, ) as f | the locale's encoding is UTF-8 on this machine
checkpoint | read_json_file | encoding="UTF-8" | codec names are case-insensitive
checkpoint | read_safetensors_header | [:121] | the JSON error texts are shorter than 120 characters
checkpoint | write | cast("b") | signed or unsigned, the view holds the same bytes: same hash, size and file
checkpoint | _load | map_location=None | =_CPU
checkpoint | _load | torch.load(path, weights_only=True) | =_CPU
checkpoint | _load | weights_only=None | weights_only=True is torch.load's default since torch 2.6
checkpoint | _load | map_location="cpu", ) | weights_only=True is torch.load's default since torch 2.6
checkpoint | _retire | shutil.rmtree(dest,  | deleting a folder this process has just renamed and owns does not fail here
checkpoint | load_checkpoint | distributed = None | =_DIST
checkpoint | load_checkpoint | if rank  | =_DIST
checkpoint | load_checkpoint | model_sd, optim_sd = None | =_DIST
checkpoint | load_checkpoint | options = None | =_DIST
checkpoint | load_checkpoint | broadcast_from_rank0=None | =_DIST
checkpoint | load_checkpoint | options=None) | =_DIST
checkpoint | load_checkpoint | model_sd, ) | =_DIST
checkpoint | load_checkpoint | optim_sd, ) | =_DIST
checkpoint | load_exported_model | strict= | names and shapes were compared with the header first: strict cannot matter
checkpoint | load_exported_model | load_state_dict(_load_safetensors(path), ) | names and shapes were compared with the header first: strict cannot matter
checkpoint | load_exported_model | model.to(None) | =_CPU
checkpoint | set_rng_state | cuda | =_CPU
checkpoint | set_rng_state | CUDA | =_CPU
checkpoint | set_rng_state | keys.numpy().astype(None) | np.random.set_state accepts the int64 key array as it is
"""


def _rules() -> list[tuple[str, str, str, str]]:
    notes = {name: value for name, value in globals().items() if name.isupper() and name.startswith("_")}
    rules = []
    for line in _RULES_TABLE.strip().splitlines():
        module, function, text, note = (part.strip() for part in line.split(" | "))
        rules.append((module, function, text, notes[note[1:]] if note.startswith("=") else note))
    return rules


EQUIVALENT_RULES = _rules()


def equivalent_note(module: str, mutant: str, diff: list[str]) -> str | None:
    """The note of the first rule that matches a surviving mutant (its function, and the rule's
    text in a changed line, removed or added), or None."""
    stem = mutant.rpartition(".")[2].rpartition("__mutmut_")[0]  # x_func or xǁClassǁmethod
    function = stem.rpartition("ǁ")[2] if "ǁ" in stem else stem.removeprefix("x_")
    changed = [ln[1:] for ln in diff if ln.startswith(("+", "-"))]
    for rule_module, rule_function, text, note in EQUIVALENT_RULES:
        if rule_module == module and rule_function in ("*", function) and any(text in ln for ln in changed):
            return note
    return None


def _mutmut_section(module: dict) -> str:
    args = ["-q", "-p", "no:cacheprovider", "-x", "-m", "not slow and not gpu and not distributed"]
    if module.get("k"):
        args += ["-k", module["k"]]
    tests = [t for t in module["tests"] if (ROOT / t).exists()]
    return "\n".join([
        "",
        "[tool.mutmut]",
        'source_paths = ["src/"]',
        f"only_mutate = [{json.dumps(module['path'])}]",
        f"pytest_add_cli_args = {json.dumps(args)}",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        f"process_isolation = {json.dumps(module['isolation'])}",
        "use_git_change_detection = false",
        "timeout_multiplier = 10.0",
        "timeout_constant = 30.0",
        "",
    ])


def _prepare(work: Path, module: dict, reuse: bool) -> None:
    """A scratch copy of the repository with mutmut's configuration; with ``reuse``, an earlier
    copy keeps its mutants and results (mutmut then checks only what is left) and gets the
    current tests."""
    reuse = reuse and (work / "mutants").is_dir()
    if work.exists() and not reuse:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    # Reusing keeps the copy of src/ (the mutants and results belong to it: the sources must not
    # have changed since) and takes the current tests.
    for folder in ("tests",) if reuse else ("src", "tests"):
        if (work / folder).exists():
            shutil.rmtree(work / folder)
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    if (work / "mutants" / "tests").exists():  # mutmut copies tests/ in once: refresh it
        shutil.rmtree(work / "mutants" / "tests")
    text = (ROOT / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(text + _mutmut_section(module))


def _mutmut(work: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=work, env=env,
                          capture_output=True, text=True)


def _mutmut_run(work: Path, env: dict, args: list[str], deadline: float | None) -> tuple[int | None, str]:
    """``mutmut run ARGS`` in its own process group, stopped (the whole group) at ``deadline``
    (time.monotonic()). Returns (exit code or None when stopped, the end of its output)."""
    log = work / "mutmut-run.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mutmut", "run", *args], cwd=work, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            code = None
    return code, log.read_text(errors="replace")[-3000:]


def _statuses(work: Path, env: dict) -> dict[str, str]:
    statuses: dict[str, str] = {}
    for line in _mutmut(work, env, "results", "--all", "true").stdout.splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m:
            statuses[m.group(1)] = m.group(2).strip()
    return statuses


def _mutant_order(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("_")
    return stem, int(number) if number.isdigit() else 0


#: Prints {mutant: [changed lines]} for the mutants named on stdin, with mutmut's own diff
#: function, in one process (``mutmut show`` would start one process per mutant).
_DIFF_SCRIPT = """
import json, sys
from mutmut.__main__ import get_diff_for_mutant
path, names = sys.argv[1], json.loads(sys.stdin.read())
out = {}
for name in names:
    text = get_diff_for_mutant(name, path=path)
    out[name] = [ln for ln in text.splitlines()
                 if ln.startswith(("-", "+")) and not ln.startswith(("---", "+++"))]
print(json.dumps(out))
"""


def _diffs(work: Path, env: dict, path: str, names: list[str]) -> dict[str, list[str]]:
    if not names:
        return {}
    proc = subprocess.run([sys.executable, "-c", _DIFF_SCRIPT, path], input=json.dumps(names),
                          cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    out = {}  # mutmut's internals changed: one `mutmut show` per mutant
    for name in names:
        text = _mutmut(work, env, "show", name).stdout
        out[name] = [ln for ln in text.splitlines()
                     if ln.startswith(("-", "+")) and not ln.startswith(("---", "+++"))]
    return out


def run_module(name: str, module: dict, work: Path, max_children: int, time_limit: float | None,
               reuse: bool, recheck: bool) -> dict:
    _prepare(work, module, reuse)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("SPIKEFM_DEBUG", None)
    t0 = time.monotonic()
    deadline = None if time_limit is None else t0 + time_limit
    before = _statuses(work, env) if reuse and recheck else {}
    code, log_tail = _mutmut_run(work, env, ["--max-children", str(max_children)], deadline)
    rechecked = sorted(k for k, v in before.items() if v in ("survived", "no tests"))
    if code is not None and rechecked:  # the tests changed since: check the survivors again
        code, log_tail = _mutmut_run(work, env, ["--max-children", str(max_children), *rechecked], deadline)
    timed_out = code is None
    seconds = time.monotonic() - t0
    statuses = _statuses(work, env)
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    # "no tests": no selected test calls the mutated function, so nothing could kill it.
    surviving = sorted((k for k, v in statuses.items() if v in ("survived", "no tests")), key=_mutant_order)
    diffs = _diffs(work, env, module["path"], surviving)
    survivors = [{"mutant": m, "status": statuses[m], "diff": diffs.get(m, [])} for m in surviving]
    result = {
        "path": module["path"],
        "tests": [t for t in module["tests"] if (ROOT / t).exists()],
        "pytest_k": module.get("k"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "counts": counts,
        "killed": counts.get("killed", 0),
        "survived": len(surviving),
        "timeout": counts.get("timeout", 0),
        "survivors": survivors,
        "seconds": round(seconds, 1),
        "survivors_rechecked": len(rechecked),
        "complete": not timed_out and "not checked" not in counts,
        "not_checked": counts.get("not checked", 0),
        "log_tail": None if code == 0 else log_tail,
    }
    return score_module(name, result)


def score_module(name: str, result: dict) -> dict:
    """(Re)apply :data:`EQUIVALENT_RULES` to a module's survivors and compute its scores."""
    for s_ in result["survivors"]:
        s_["note"] = equivalent_note(name, s_["mutant"], s_["diff"])
        s_["equivalent"] = s_["note"] is not None
    killed = result["killed"] + result["timeout"]
    ran = killed + result["survived"]
    equivalent = sum(1 for s_ in result["survivors"] if s_["equivalent"])
    result.update({
        "score": killed / ran if ran else None,
        "score_without_equivalent": killed / (ran - equivalent) if ran - equivalent else None,
        "equivalent_survivors": equivalent,
        "of_which_device_placement_only": sum(1 for s_ in result["survivors"] if s_["note"] == _CPU),
    })
    return result


def summary(results: dict) -> dict:
    totals = {k: sum(r[k] for r in results.values()) for k in ("killed", "survived", "timeout")}
    equivalent = sum(r["equivalent_survivors"] for r in results.values())
    killed = totals["killed"] + totals["timeout"]
    ran = killed + totals["survived"]
    return {**totals, "equivalent_survivors": equivalent,
            "of_which_device_placement_only": sum(r["of_which_device_placement_only"] for r in results.values()),
            "not_checked": sum(r["not_checked"] for r in results.values()),
            "modules_incomplete": sorted(n for n, r in results.items() if not r["complete"]),
            "score": killed / ran if ran else None,
            "score_without_equivalent": killed / (ran - equivalent) if ran - equivalent else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", default=",".join(MODULES),
                        help=f"comma-separated subset of: {', '.join(MODULES)}")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutant runs")
    parser.add_argument("--time-limit-s", type=float, default=None,
                        help="stop one module's mutmut run after this long (reported as incomplete)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the mutants and results already in --work (check what is left)")
    parser.add_argument("--recheck-survivors", action="store_true",
                        help="with --reuse: run the earlier survivors again (after adding tests)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mutation.json"))
    parser.add_argument("--renote", action="store_true",
                        help="only re-apply EQUIVALENT_RULES to the survivors already in --out")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.modules.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)}")
    try:
        from importlib.metadata import version

        mutmut_version = version("mutmut")
    except Exception:  # noqa: BLE001
        parser.error("mutmut is not installed: pip install mutmut")
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    results = dict(previous.get("modules", {}))
    if args.renote:
        names = []
        results = {n: score_module(n, r) for n, r in results.items()}
    scratch = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="spikefm-mutation-"))
    for name in names:
        print(f"mutating {MODULES[name]['path']} ...", flush=True)
        results[name] = run_module(name, MODULES[name], scratch / name, args.max_children, args.time_limit_s,
                                   args.reuse, args.recheck_survivors)
        r = results[name]
        print(f"  {r['killed']} killed, {r['survived']} survived, {r['timeout']} timeout, "
              f"{r['not_checked']} not checked (score {r['score'] if r['score'] is None else round(r['score'], 3)}) "
              f"in {r['seconds']} s", flush=True)
    report = {
        "mutmut": mutmut_version,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
        "modules": results,
        "total": summary(results),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    if not args.work:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
