"""Mends from a walk through the autoregressive commands: the context limit of generation names
what fits (checked against the arithmetic, not the code's own formula), and the options of
`generate` and `eval` say what they do."""
from __future__ import annotations

import dataclasses
import itertools
import re

import pytest

from spikefm.families.ar.model import check_generation_context, llama_preset


def _fits(max_seq_len: int, prefix: bool, units: int, prompt_bins: int, bins: int) -> bool:
    """Does a generation fit: every token but the last generated one is read, plus the prefix."""
    return (prompt_bins + bins) * (units + 1) - 1 + int(prefix) <= max_seq_len


@pytest.mark.parametrize("max_seq_len, prefix", [(64, False), (109, False), (109, True)])
def test_a_generation_over_the_context_names_the_most_that_fits(max_seq_len, prefix):
    """A prompt over the model's max_seq_len was told "fewer prompt bins" with no number; every
    limit named must fit, and one more must not."""
    cfg = dataclasses.replace(llama_preset("tiny"), max_seq_len=max_seq_len, unit_count_prefix=prefix)
    fits = lambda u, p, n: _fits(max_seq_len, prefix, u, p, n)  # noqa: E731
    for units, p, n in itertools.product((1, 5, 9, 30, 53, 54, 63, 64, 70), (0, 1, 3, 12), (1, 2, 5, 11, 40)):
        prompt_len = p * (units + 1)
        if fits(units, p, n):
            assert check_generation_context(cfg, units, n, prompt_len) == (p + n) * (units + 1) - 1
            continue
        with pytest.raises(ValueError) as exc:
            check_generation_context(cfg, units, n, prompt_len)
        msg = str(exc.value)
        assert "\n" not in msg and msg.startswith(f"prompt ({prompt_len}) plus generated ({n * (units + 1)}) tokens "
                                                  f"exceed the model's max_seq_len {max_seq_len}; generate with ")
        case = (units, p, n, msg)
        if m := re.search(r"fewer units \(at most (\d+) fit one bin\)$", msg):
            k = int(m[1])
            assert fits(k, 0, 1) and not fits(k + 1, 0, 1) and not fits(units, 0, 1), case
        elif m := re.search(r"fewer units or no prompt \(with a prompt, at most (\d+) units fit\)$", msg):
            k = int(m[1])
            assert p and fits(k, 1, 1) and not fits(k + 1, 1, 1) and not fits(units, 1, 1), case
        elif m := re.search(r"a shorter prompt: at most (\d+) prompt bin\(s\) fit before (\d+) generated bins$", msg):
            k = int(m[1])
            assert int(m[2]) == n and k < p and fits(units, k, n) and not fits(units, k + 1, n), case
            assert not fits(units, p, 1), case  # said only when the prompt alone leaves no room
        elif m := re.search(r"a shorter prompt and fewer bins: at most (\d+) bins of (\d+) units fit, prompt and "
                            r"generated together \(at most (\d+) prompt bins\)$", msg):
            total, k = int(m[1]), int(m[3])
            assert int(m[2]) == units and k == total - 1 and fits(units, k, 1) and not fits(units, total, 1), case
            assert not fits(units, 1, n), case  # not even one prompt bin fits before n bins
        elif m := re.search(r"fewer bins \(at most (\d+)\)(?:, or a shorter prompt \(at most (\d+) prompt bin\(s\) "
                            r"before (\d+) bins\))?$", msg):
            k = int(m[1])
            assert k >= 1 and fits(units, p, k) and not fits(units, p, k + 1), case
            if m[2] is not None:
                j = int(m[2])
                assert p and int(m[3]) == n and j >= 1 and fits(units, j, n) and not fits(units, j + 1, n), case
            else:
                assert not p or not fits(units, 1, n), case  # no prompt, or no prompt bin fits before n bins
        else:
            pytest.fail(f"unexpected fix: {case}")


def test_generate_and_eval_options_say_what_they_do(capsys):
    """generate --temperature, --top-k, --units, --bins and eval --max-train-tokens had no help;
    eval --help offered val for --split without saying that ar refuses it."""
    from spikefm.cli import build_parser, main

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    gen = {a.dest: a.help for a in sub["generate"]._actions}
    ev = {a.dest: a.help for a in sub["eval"]._actions}
    assert all(gen[d] for d in ("units", "bins", "temperature", "top_k", "prompt")), gen
    assert "default 1.0" in gen["temperature"] and "0 = greedy" in gen["temperature"]
    assert "default: all" in gen["top_k"] and "max_seq_len" in gen["bins"] and "session's unit count" in gen["units"]
    assert "--ngram" in ev["max_train_tokens"] and "default: all" in ev["max_train_tokens"]
    assert "ar refuses val" in ev["split"] and "(ndt, neds), the only ones that accept val" in ev["split"]
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "0 = greedy" in " ".join(capsys.readouterr().out.split())


def test_ar_evaluate_refuses_val_naming_the_families_that_take_it():
    from spikefm.families.ar.family import ARFamily

    with pytest.raises(ValueError, match=r"^split must be 'train' or 'test' \(the corpus's splits; --split val is "
                                         r"for the masked families, ndt and neds\), got 'val'$"):
        ARFamily().evaluate("no-run", "no-corpus", split="val")
