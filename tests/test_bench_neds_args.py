"""benchmarks/bench_neds.py --cli-defaults: the fine-tuning options are `spikefm finetune`'s own
defaults, and a recipe option given beside it (which would be ignored) is refused before any work."""
from __future__ import annotations

import pytest

from tests._benchmark_script import load_benchmark


def test_cli_defaults_take_finetunes_defaults_and_drop_the_recipe():
    bench = load_benchmark("bench_neds")
    recipe = bench.parse_args([])
    assert (recipe.eval_every, recipe.neds_set, recipe.ndt_strategy) == (50, ["model.dropout=0.2"], "full")
    args = bench.parse_args(["--cli-defaults", "--seeds", "7", "--choice-signal", "1.0"])
    # README: `spikefm finetune` defaults to --strategy auto, up to 1,500 steps, validation every 250
    # steps, patience 3; no override reaches either family and each uses its default preset
    assert (args.finetune_steps, args.eval_every, args.patience) == (1500, 250, 3)
    assert (args.strategy, args.ndt_strategy, args.neds_set, args.ndt_set, args.preset) == ("auto", "auto", [], [], None)
    assert (args.seeds, args.choice_signal) == ("7", 1.0)  # data options are kept
    # the tables were measured before data.val_label_cap became the default: pinned false in both modes,
    # and `true` (today's finetune default) is not a recipe option, so --cli-defaults takes it
    assert recipe.neds_val_label_cap == args.neds_val_label_cap == "false"
    now = bench.parse_args(["--cli-defaults", "--neds-val-label-cap", "true"])
    assert (now.neds_val_label_cap, now.neds_set, now.eval_every) == ("true", [], 250)


def test_cli_defaults_refuse_recipe_options_before_writing(tmp_path, capsys):
    bench = load_benchmark("bench_neds")
    out = tmp_path / "r.json"
    out.write_text("earlier results")
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--cli-defaults", "--steps", "5", "--neds-set", "model.dim=32", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--cli-defaults runs the commands without flags; drop --steps, --neds-set" in err
    assert out.read_text() == "earlier results"
