"""--mode=splits (svreid_jax/splits.py): one model per iLIDS-VID/PRID split, resumable, aggregated.

The loop, the per-split configs and workdirs, resuming and the mean ± std table are checked in process
with a stand-in for training; the real command on a micro iLIDS-VID-layout fixture is in
tests/test_modes.py (test_splits_mode_trains_ten_models_and_aggregates).
"""
import json
import os

import numpy as np
import pytest

from configs import demo, ilidsvid
from svreid_jax import splits
from svreid_jax.evaluation import protocols


def test_parse_split_ids():
    assert splits.parse_split_ids("0-9") == tuple(range(10))
    assert splits.parse_split_ids("0,3, 5") == (0, 3, 5)
    assert splits.parse_split_ids("2") == (2,)
    assert splits.parse_split_ids("1-2,7") == (1, 2, 7)
    for bad in ("", "a-b", "0-2,1", "-1"):
        with pytest.raises(ValueError, match="--splits="):
            splits.parse_split_ids(bad)


def _fake_metrics(k):
    """What train_and_evaluate returns for split k in the stand-in: distinct, hand-checkable values."""
    return {"rank1": 0.1 * k, "rank5": 0.5, "rank10": 0.6 + 0.01 * k, "rank20": 1.0, "mAP": 0.2 + 0.02 * k,
            "num_valid_queries": 150.0, "extract_sec": 1.0, "general/rank1": 0.0}


def _fake_train(calls):
    def train_fn(config, workdir):
        k = config.data.target.options.split_id
        calls.append((k, workdir))
        metrics = _fake_metrics(k)
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "results.json"), "w") as f:  # as train_and_evaluate writes it
            json.dump(metrics, f)
        return metrics

    return train_fn


def test_run_splits_trains_one_model_per_split_and_aggregates(tmp_path):
    config = ilidsvid.get_config()
    calls = []
    result = splits.run_splits(config, str(tmp_path), range(10), train_fn=_fake_train(calls))
    # Split k trains with split_id k, in its own workdir; the given config is left as it was.
    assert calls == [(k, str(tmp_path / f"split_{k}")) for k in range(10)]
    assert config.data.target.options.split_id == 0
    rank1 = [0.1 * k for k in range(10)]
    assert result.mean["rank1"] == pytest.approx(0.45)
    assert result.std["rank1"] == pytest.approx(np.std(rank1, ddof=1))  # 0.30277
    assert result.std["rank5"] == 0.0 and result.mean["num_valid_queries"] == 150.0
    assert set(result.mean) == set(splits.SUMMARY_KEYS)  # the primary protocol's metrics only
    report = json.load(open(tmp_path / "splits_results.json", encoding="utf-8"))
    assert report["split_ids"] == list(range(10)) and report["mean"]["mAP"] == pytest.approx(0.29)
    assert report["workdirs"][3] == str(tmp_path / "split_3")
    assert report["per_split"][7]["rank10"] == pytest.approx(0.67)
    md = open(tmp_path / "splits_results.md", encoding="utf-8").read()
    assert md.splitlines()[:3] == [
        "| svreid → ilidsvid | R-1 | R-5 | R-10 | R-20 | mAP |",
        "|---|---|---|---|---|---|",
        "| mean ± std (10 splits, one model each) | 45.0 ± 30.3 | 50.0 ± 0.0 | 64.5 ± 3.0 | 100.0 ± 0.0 | 29.0 ± 6.1 |"]
    assert "| split_9 | 90.0 | 50.0 | 69.0 | 100.0 | 38.0 |" in md

    # Resumable: finished splits are read back, only the missing one is trained.
    os.remove(tmp_path / "split_4" / "results.json")
    calls.clear()
    again = splits.run_splits(config, str(tmp_path), range(10), train_fn=_fake_train(calls))
    assert calls == [(4, str(tmp_path / "split_4"))]
    assert again.mean == result.mean and again.std == result.std


def test_run_splits_refuses_targets_without_splits(tmp_path):
    never = _fake_train([])
    config = demo.get_config("paper,micro")
    with pytest.raises(ValueError, match=r"^--mode=splits trains one model per train/test split of a target whose "
                                         r"reader takes a split_id \(iLIDS-VID, PRID\); "
                                         r"config.data.target.name='mars' has none$"):
        splits.run_splits(config, str(tmp_path), train_fn=never)
    config.data.target.name = "ilidsvid"
    with pytest.raises(ValueError, match="config.data.demo generates a MARS-layout target"):
        splits.run_splits(config, str(tmp_path), train_fn=never)
    config = ilidsvid.get_config()
    config.data.target.packed = "/data/packed"
    with pytest.raises(ValueError, match="packed shards cannot change"):
        splits.run_splits(config, str(tmp_path), train_fn=never)
    assert not os.listdir(tmp_path)


def test_a_split_result_without_the_metrics_is_run_again(tmp_path, caplog):
    os.makedirs(tmp_path / "split_0")
    (tmp_path / "split_0" / "results.json").write_text(json.dumps({"rank1": 0.5}))
    calls = []
    result = splits.run_splits(ilidsvid.get_config(), str(tmp_path), [0], train_fn=_fake_train(calls))
    assert calls == [(0, str(tmp_path / "split_0"))] and result.mean["mAP"] == pytest.approx(0.2)
    assert f"split 0: {tmp_path / 'split_0' / 'results.json'} lacks the metrics ['rank5', 'rank10', 'rank20', 'mAP', " \
           "'num_valid_queries']; running it again" in caplog.text


def test_a_run_that_returns_no_metrics_is_named(tmp_path):
    def incomplete(config, workdir):
        return {"rank1": 0.5}

    with pytest.raises(ValueError, match=r"split 0: the results of the run in .*split_0 lack \['rank5'"):
        splits.run_splits(ilidsvid.get_config(), str(tmp_path), [0], train_fn=incomplete)


def test_summary_table_rows_are_the_mean_then_each_split():
    result = protocols.SplitsResult(split_ids=(0, 1), per_split=({"rank1": 0.5, "mAP": 0.4}, {"rank1": 0.7, "mAP": 0.6}),
                                    mean={"rank1": 0.6, "mAP": 0.5}, std={"rank1": 0.1414, "mAP": 0.1414})
    table = splits.summary_table(ilidsvid.get_config(), result).splitlines()
    assert table[2] == "| mean ± std (2 splits, one model each) | 60.0 ± 14.1 | – | – | – | 50.0 ± 14.1 |"
    assert table[3:] == ["| split_0 | 50.0 | – | – | – | 40.0 |", "| split_1 | 70.0 | – | – | – | 60.0 |"]
