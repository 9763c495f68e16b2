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


def _outcomes(ranks, queries=None):
    """Per-query outcomes as protocols.per_query writes them (APs are not read by the pairing)."""
    queries = queries or [f"{i}/1/f{i}.jpg" for i in range(len(ranks))]
    return {"format": "svreid_jax.per_query", "protocol": "exclude_query", "query": queries,
            "first_match_rank": list(ranks), "average_precision": [None if r < 0 else 1.0 / (r + 1) for r in ranks]}


def test_paired_by_hand():
    # Four queries with a match and one without. Seed 0: A ranks q0, q1 first, B q0, q2 (level);
    # seed 1: A ranks q0, q3 first, B none (+50 points).
    a = {0: _outcomes([0, 0, 3, 2, -1]), 1: _outcomes([0, 1, 1, 0, -1])}
    b = {0: _outcomes([0, 5, 0, 1, -1]), 1: _outcomes([2, 2, 2, 2, -1]), 2: _outcomes([0, 0, 0, 0, -1])}
    r = bench.paired(a, b)
    assert r["seeds"] == [0, 1]  # seed 2 is B's alone
    assert r["per_seed"] == [0.0, 50.0] and r["delta"] == 25.0
    assert (r["a_only"], r["b_only"]) == (3, 1)
    assert -100 <= r["interval"][0] <= 25.0 <= r["interval"][1] <= 100
    assert bench.paired(a, b) == r  # seeded: the same interval every time
    # Where every pair differs alike, every draw is the same.
    assert bench.paired({0: _outcomes([0] * 4)}, {0: _outcomes([1] * 4)})["interval"] == (100.0, 100.0)


def test_paired_interval_matches_the_normal_approximation():
    # One seed, 400 queries, A alone ranks 100 of them first: ΔR-1 = 25 points, and the query bootstrap's
    # spread is the sd of the per-query differences over √400: √(0.25 · 0.75) / 20 = 2.165 points.
    a = {0: _outcomes([0] * 100 + [1] * 300)}
    b = {0: _outcomes([1] * 400)}
    r = bench.paired(a, b)
    half = 1.96 * 100 * math.sqrt(0.25 * 0.75) / 20
    assert r["delta"] == 25.0
    assert r["interval"][0] == pytest.approx(25.0 - half, abs=0.5)
    assert r["interval"][1] == pytest.approx(25.0 + half, abs=0.5)


def test_paired_refuses_different_test_sets():
    a = {0: _outcomes([0, 1]), 1: _outcomes([0, 1])}
    b = {0: _outcomes([0, 1]), 1: _outcomes([0, 1], queries=["0/1/f0.jpg", "9/2/x.jpg"])}
    with pytest.raises(ValueError, match="seed 1: row B was tested on other queries"):
        bench.paired(a, b)
    with pytest.raises(ValueError, match="seed 0: the two rows disagree on which queries have a good match"):
        bench.paired({0: _outcomes([0, 1])}, {0: _outcomes([0, -1])})
    with pytest.raises(ValueError, match=r"no seed in common \(A has \[0\], B has \[1\]\)"):
        bench.paired({0: _outcomes([0])}, {1: _outcomes([0])})


def test_paired_table_from_the_runs_files(tmp_path, capsys):
    import json

    argv = ["--presets=hard", "--variants=source_only,plus", "--seeds=0,1", f"--root={tmp_path}", "--table-only"]
    plan_args = type("Args", (), dict(presets=["hard"], variants=["source_only", "plus"], seeds=[0, 1],
                                      root=str(tmp_path), eval_option=[], eval_rows=False))
    ranks = {("source_only", 0): [1, 1, 0, 1], ("source_only", 1): [1, 0, 1, 1],
             ("plus", 0): [0, 0, 0, 1], ("plus", 1): [0, 0, 1, 1]}
    for run in bench.plan(plan_args):
        os.makedirs(run["workdir"])
        r = ranks[(run["variant"], run["seed"])]
        with open(run["result"], "w") as f:
            json.dump({"rank1": sum(x == 0 for x in r) / 4, "mAP": 0.2}, f)
        with open(os.path.join(run["workdir"], bench.RECORD), "w") as f:
            json.dump({"train": run["command"][1:]}, f)
        if run["variant"] == "plus" or run["seed"] == 0:
            with open(run["per_query"], "w") as f:
                json.dump(_outcomes(r), f)
    assert bench.main(argv + ["--paired", "plus:source_only"]) == 0
    out = capsys.readouterr().out
    # source_only seed 1 has no per-query file: said, and no paired row
    assert "paired hard plus − source_only: no per-query outcomes in" in out and "re-evaluate it with --eval-rows" in out
    with open(os.path.join(tmp_path, "hard", "source_only", "s1", bench.PER_QUERY), "w") as f:
        json.dump(_outcomes(ranks[("source_only", 1)]), f)
    assert bench.main(argv + ["--paired", "plus:source_only"]) == 0
    out = capsys.readouterr().out
    assert "| hard | plus − source_only | 0, 1 | +50.0, +25.0 | +37.5 |" in out and "| 3 / 0 |" in out
    assert "plus − source_only" in open(os.path.join(tmp_path, "adaptation.md")).read()
    with pytest.raises(SystemExit):
        bench.main(argv + ["--paired", "plus:oracle"])
    assert "--paired 'plus:oracle': expected A:B with both A and B among --variants" in capsys.readouterr().err


def test_an_evaluation_row_gets_its_own_per_query_file_only(tmp_path):
    workdir = tmp_path / "s0"
    workdir.mkdir()
    (workdir / "eval_per_query.json").write_text("an earlier evaluation's")
    results = f"import json; json.dump({{'metrics': {{'rank1': 0.5, 'mAP': 0.4}}}}, open({str(workdir / 'eval_results.json')!r}, 'w'))"
    run = dict(kind="eval", workdir=str(workdir), command=[sys.executable, "-c", results],
               result=str(workdir / "eval_tag.json"), per_query=str(workdir / "eval_tag_per_query.json"))
    assert bench._execute(run) == {"rank1": 0.5, "mAP": 0.4}
    assert not os.path.exists(run["per_query"]) and not os.path.exists(workdir / "eval_per_query.json")
    both = results + f"; open({str(workdir / 'eval_per_query.json')!r}, 'w').write('this one')"
    run["command"] = [sys.executable, "-c", both]
    assert bench._execute(run)["rank1"] == 0.5
    assert open(run["per_query"]).read() == "this one"


def test_large_presets_test_on_200_identities_from_data_of_their_own(tmp_path, capsys):
    bench.main(["--presets=demo_large,hard_large", "--variants=plus", "--seeds=0", f"--root={tmp_path}", "--dry-run"])
    demo_line, hard_line = [l for l in capsys.readouterr().out.splitlines() if "svreid_jax.main" in l]
    assert demo_line == ("python -m svreid_jax.main --config=configs/demo.py:plus,large_test --config.seed=0 "
                         f"--config.data.demo_root={tmp_path}/data_large --workdir={tmp_path}/demo_large/plus/s0")
    assert "--config=configs/demo.py:plus,hard,large_test " in hard_line
    assert hard_line.endswith(f"--workdir={tmp_path}/hard_large/plus/s0")
    with pytest.raises(SystemExit):
        bench.main(["--presets=demo_huge", f"--root={tmp_path}", "--dry-run"])
