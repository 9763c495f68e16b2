"""benchmarks/adaptation.py: the table maths on hand values and the commands of --dry-run (no training)."""
import importlib.util
import math
import os
import sys

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "adaptation.py")
_spec = importlib.util.spec_from_file_location("adaptation_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_mean_std_is_the_sample_std():
    assert bench.mean_std([30.0, 34.0, 38.0]) == (34.0, 4.0)  # deviations −4, 0, 4: √(32 / 2)
    assert bench.mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in bench.mean_std([]))


def test_gap_closed_and_separation():
    assert bench.gap_closed(40.0, 30.0, 50.0) == 0.5
    assert bench.gap_closed(25.0, 30.0, 50.0) == -0.25
    assert math.isnan(bench.gap_closed(40.0, 30.0, 30.0))
    assert bench.separated((40.0, 2.0), (30.0, 3.0))  # 38 > 33
    assert not bench.separated((36.0, 2.0), (30.0, 4.0))  # 34 = 34 is not above


def _r(r1, m):
    return {"rank1": r1 / 100, "mAP": m / 100}


def test_table_by_hand():
    rows = {
        ("demo", "source_only"): {0: _r(30, 20), 1: _r(34, 24), 2: _r(38, 28)},  # 34 ± 4
        ("demo", "paper"): {0: _r(44, 30), 1: _r(45, 31), 2: _r(46, 32)},  # 45 ± 1
        ("demo", "oracle"): {0: _r(54, 40), 1: _r(54, 40), 2: _r(54, 40)},  # 54 ± 0
        ("demo", "source_only + camera_normalise=True"): {0: _r(40, 30), 1: _r(40, 30), 2: _r(40, 30)},
        ("demo", "paper + camera_normalise=True"): {0: _r(42, 30), 1: _r(42, 30), 2: _r(42, 30)},
        ("demo", "oracle + camera_normalise=True"): {0: _r(60, 50), 1: _r(60, 50), 2: _r(60, 50)},
    }
    lines = bench.table(rows, [0, 1, 2]).splitlines()
    assert lines[0].startswith("| preset | variant | R-1 | mAP |")
    assert lines[2] == "| demo | source_only | 34.0 ± 4.0 | 24.0 ± 4.0 | 30.0 / 20.0, 34.0 / 24.0, 38.0 / 28.0 | – | – |"
    # paper: (45 − 34) / (54 − 34) = 55%; 45 − 1 = 44 > 34 + 4 = 38
    assert lines[3] == "| demo | paper | 45.0 ± 1.0 | 31.0 ± 1.0 | 44.0 / 30.0, 45.0 / 31.0, 46.0 / 32.0 | 55% | yes |"
    assert lines[4].startswith("| demo | oracle | 54.0 ± 0.0 |") and lines[4].endswith("| – | – |")
    # The re-evaluated row is measured against the re-evaluated source only and oracle: (42 − 40) / (60 − 40)
    assert lines[6].startswith("| demo | paper + camera_normalise=True | 42.0 ± 0.0 |")
    assert lines[6].endswith("| 10% | yes |")


def test_table_missing_oracle_and_seeds():
    rows = {("hard", "source_only"): {0: _r(10, 5), 1: _r(10, 5)}, ("hard", "paper"): {0: _r(12, 6), 2: _r(14, 8)}}
    lines = bench.table(rows, [0, 1, 2]).splitlines()
    assert lines[3] == "| hard | paper | 13.0 ± 1.4 | 7.0 ± 1.4 | 12.0 / 6.0 (s0), 14.0 / 8.0 (s2) | – | yes |"
    # One seed of source only: no spread, so no separation verdict.
    del rows[("hard", "source_only")][1]
    assert bench.table(rows, [0, 1, 2]).splitlines()[3].endswith("| – | – |")


def test_columns_for_other_rows_to_clear():
    rows = {
        ("demo", "source_only"): {0: _r(30, 20), 1: _r(34, 24), 2: _r(38, 28)},  # 34 ± 4
        ("demo", "cam"): {0: _r(50, 30), 1: _r(52, 31), 2: _r(54, 32)},  # 52 ± 2
        ("demo", "plus"): {0: _r(58, 30), 1: _r(60, 31), 2: _r(62, 32)},  # 60 ± 2: 58 > 54
        ("demo", "paper"): {0: _r(52, 30), 1: _r(53, 31), 2: _r(54, 32)},  # 53 ± 1: 52 < 54
        ("demo", "oracle"): {0: _r(54, 40), 1: _r(54, 40), 2: _r(54, 40)},
    }
    lines = bench.table(rows, [0, 1, 2], above=["cam"]).splitlines()
    assert lines[0].endswith("| mean−std > source only mean+std | mean−std > cam mean+std |")
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[3].endswith("| 90% | yes | – |")  # cam itself
    assert lines[4].endswith("| 130% | yes | yes |") and lines[5].endswith("| 95% | yes | no |")
    assert lines[6].endswith("| – | – | – |")  # oracle


def test_table_only_trains_nothing_and_reads_what_finished(tmp_path, capsys):
    import json

    argv = ["--presets=demo", "--variants=source_only,paper", "--seeds=0,1", f"--root={tmp_path}"]
    plan_args = type("Args", (), dict(presets=["demo"], variants=["source_only", "paper"], seeds=[0, 1],
                                      root=str(tmp_path), eval_option=[], eval_rows=False))
    for run in bench.plan(plan_args):
        if (run["variant"], run["seed"]) == ("paper", 1):
            continue  # one run not finished
        os.makedirs(run["workdir"])
        r1 = {"source_only": 0.3, "paper": 0.5}[run["variant"]] + 0.02 * run["seed"]
        with open(run["result"], "w") as f:
            json.dump({"rank1": r1, "mAP": 0.2}, f)
        with open(os.path.join(run["workdir"], bench.RECORD), "w") as f:
            json.dump({"train": run["command"][1:]}, f)
    assert bench.main(argv + ["--table-only"]) == 0
    out = capsys.readouterr().out
    assert "[4/4] demo paper seed 1: not run (--table-only)" in out
    assert "| demo | paper | 50.0 ± 0.0 | 20.0 ± 0.0 | 50.0 / 20.0 (s0) | – | – |" in out
    assert not os.path.exists(os.path.join(tmp_path, "demo", "paper", "s1"))  # nothing trained


def test_dry_run_commands(tmp_path, capsys):
    root = str(tmp_path / "bench")
    assert bench.main(["--presets=demo,hard", "--variants=source_only,oracle", "--seeds=0,1", f"--root={root}",
                       "--eval-option", "camera_normalise=True", "--eval-rows", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 * 2 * 2 * 2  # presets × variants × seeds × (train, eval)
    data = os.path.join(root, "data")
    assert lines[0] == ("python -m svreid_jax.main --config=configs/demo.py:source_only --config.seed=0 "
                        f"--config.data.demo_root={data} --workdir={os.path.join(root, 'demo', 'source_only', 's0')}")
    assert lines[1] == lines[0] + " --mode=eval --config.eval.camera_normalise=True"
    assert lines[-2] == ("python -m svreid_jax.main --config=configs/demo.py:oracle,hard --config.seed=1 "
                         f"--config.data.demo_root={data} --workdir={os.path.join(root, 'hard', 'oracle', 's1')}")
    assert not os.path.exists(root)  # nothing ran


def test_dry_run_without_eval_rows_puts_the_options_in_training(tmp_path, capsys):
    bench.main(["--presets=hard", "--variants=paper", "--seeds=2", f"--root={tmp_path}",
                "--eval-option", "camera_normalise=True", "--dry-run"])
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.endswith(f"--workdir={tmp_path}/hard/paper/s2 --config.eval.camera_normalise=True")


def test_a_plus_joins_demo_modifiers_into_one_variant(tmp_path, capsys):
    bench.main(["--presets=hard", "--variants=plus+no_soft,plus+no_such_switch", "--seeds=0", f"--root={tmp_path}",
                "--dry-run"])
    out = capsys.readouterr().out
    (line,) = [l for l in out.splitlines() if "svreid_jax.main" in l]
    assert "--config=configs/demo.py:plus,no_soft,hard " in line and line.endswith(f"--workdir={tmp_path}/hard/plus+no_soft/s0")
    assert "skipping variant 'plus+no_such_switch'" in out


def test_unknown_variant_is_skipped_with_a_message(tmp_path, capsys):
    bench.main(["--presets=demo", "--variants=source_only,no_such_variant", "--seeds=0", f"--root={tmp_path}",
                "--dry-run"])
    out = capsys.readouterr().out
    assert "skipping variant 'no_such_variant'" in out and len([l for l in out.splitlines() if "svreid_jax.main" in l]) == 1


def test_a_finished_run_is_reused_only_for_its_own_command(tmp_path):
    import json

    class Args:
        presets, variants, seeds, root = ["demo"], ["paper"], [0], str(tmp_path)
        eval_option, eval_rows = [], False

    (run,) = bench.plan(Args)
    os.makedirs(run["workdir"])
    with open(run["result"], "w") as f:
        json.dump({"rank1": 0.5, "mAP": 0.4}, f)
    assert bench._done(run) is None  # no record of the command
    with open(os.path.join(run["workdir"], bench.RECORD), "w") as f:
        json.dump({"train": run["command"][1:]}, f)
    assert bench._done(run)["rank1"] == 0.5
    Args.eval_option = ["camera_normalise=True"]
    (changed,) = bench.plan(Args)
    assert bench._done(changed) is None
