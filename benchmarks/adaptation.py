"""How much of the synthetic → real gap each variant closes, on the demo and the hard preset, over seeds.

  python benchmarks/adaptation.py                       # demo, hard × source_only, paper, plus, oracle × seeds 0 1 2
  python benchmarks/adaptation.py --presets=hard --variants=source_only,oracle --seeds=0
  python benchmarks/adaptation.py --eval-option camera_normalise=True --eval-rows   # + its own rows
  python benchmarks/adaptation.py --variants=plus+no_soft,plus+kmeans --presets=demo   # ablation rows
  python benchmarks/adaptation.py --dry-run             # the commands, nothing run
  python benchmarks/adaptation.py --table-only --above=source_only+cam+tbn   # the table of what has finished
  python benchmarks/adaptation.py --variants=source_only+cam+tbn,plus --paired plus:source_only+cam+tbn   # query by query

Every run is `python -m svreid_jax.main --config=configs/demo.py:<variant>[,hard] --config.seed=<s>
--workdir=<root>/<preset>/<variant>/s<seed>`, one at a time, all presets sharing the demo data under
<root>/data (the hard preset's goes to <root>/data_hard). `demo_large` and `hard_large` are the two presets
with 200 target test identities (about 400 queries; configs/demo.py large_test), their data under
<root>/data_large (and data_large_hard). A '+' in a variant joins configs/demo.py modifiers:
'plus+no_soft' runs configs/demo.py:plus,no_soft. A run whose results.json came from the same
command is read, not run again, so the benchmark resumes and extends; a changed command runs again
(a finished training then only resumes at its last step and re-evaluates).

Evaluation-time options (`--eval-option NAME=VALUE`, repeatable) go to every variant alike as
`--config.eval.NAME=VALUE`. Without --eval-rows they are part of every training command; with
--eval-rows training runs without them and each finished checkpoint is evaluated again with them
(`--mode=eval`, kept as eval_<tag>.json), giving rows of their own: a gain from a test-time step is
then read apart from the gain of adaptation.

Paired rows (`--paired A:B`, repeatable; both in --variants): row A against row B on the same seeds and the
same test queries, from each run's per-query outcomes (per_query.json, written by training; the
re-evaluated rows' eval_<tag>_per_query.json). R-1 over 100 queries moves by whole queries and its
spread over 3 seeds is several points, so two rows' mean ± std often overlap where the query-by-query
comparison still tells them apart, or shows that it cannot. The paired table gives the R-1 difference
per seed and its mean, a 95% interval from a two-level bootstrap (seeds drawn with replacement, then
queries, the same queries for every drawn seed: both the training seed's and the test set's variation are
in it), and how many (seed, query) pairs only A or only B ranks first. Runs made before the per-query
files existed have none: re-evaluate them (`--eval-option camera_normalise=False --eval-rows` gives rows
equal to the trained ones, with the files).

The table: R-1 and mAP in percent, mean ± sample std (ddof=1) over the seeds, the per-seed values,
the share of the gap closed on R-1, (variant − source only) / (oracle − source only) of the means,
and whether the variant's mean − std lies above source only's mean + std (with 2 seeds or more). It also goes to
<root>/adaptation.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# preset → what it adds to the config argument; the _large presets test on 200 target identities (about 400
# queries, configs/demo.py large_test), from demo data of their own (DATA_FOLDERS).
PRESETS = {"demo": "", "hard": ",hard", "demo_large": ",large_test", "hard_large": ",hard,large_test"}
DATA_FOLDERS = {"demo_large": "data_large", "hard_large": "data_large"}  # under --root; other presets: data
BASELINE, UPPER = "source_only", "oracle"
RECORD = "benchmark_command.json"  # in each run's workdir: the command its results.json came from
PER_QUERY = "per_query.json"  # in each run's workdir: training's per-query outcomes (protocols.per_query)


# ---------------------------------------------------------------------------------------------
# Table maths (pure; tests/test_adaptation_benchmark.py)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof=1; 0 for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def gap_closed(variant: float, source_only: float, oracle: float) -> float:
    """(variant − source only) / (oracle − source only); NaN when oracle and source only coincide."""
    gap = oracle - source_only
    return (variant - source_only) / gap if gap != 0 and not math.isnan(gap) else math.nan


def separated(variant: tuple[float, float], source_only: tuple[float, float]) -> bool:
    """Whether variant mean − std > source only mean + std ((mean, std) pairs)."""
    return variant[0] - variant[1] > source_only[0] + source_only[1]


def table(rows: Mapping[tuple[str, str], Mapping[int, Mapping[str, float]]], seeds: Sequence[int],
          above: Sequence[str] = ()) -> str:
    """The markdown table.

    rows: {(preset, row label): {seed: {'rank1': fraction, 'mAP': fraction}}}, where a row label is a
    variant name, or '<variant> + <eval tag>' for a re-evaluated row. Gap closed and the separation test
    compare each row with source only and oracle of the same preset and the same evaluation tag; each
    variant in `above` adds a column testing separation from that variant's row as well. A row missing
    some of `seeds` names the seed of each value.
    """
    lines = ["| preset | variant | R-1 | mAP | R-1 / mAP per seed | R-1 gap closed | mean−std > source only mean+std |"
             + "".join(f" mean−std > {other} mean+std |" for other in above),
             "|---|---|---|---|---|---|---|" + "---|" * len(above)]

    def stats(preset, label, metric):
        runs = rows.get((preset, label), {})
        return mean_std([100 * runs[s][metric] for s in seeds if s in runs])

    for (preset, label), runs in rows.items():
        variant, _, tag = label.partition(" + ")
        suffix = f" + {tag}" if tag else ""
        r1, m = stats(preset, label, "rank1"), stats(preset, label, "mAP")
        partial = any(s not in runs for s in seeds)
        per_seed = ", ".join(f"{100 * runs[s]['rank1']:.1f} / {100 * runs[s]['mAP']:.1f}" + (f" (s{s})" if partial else "")
                             for s in seeds if s in runs)
        base, upper = stats(preset, BASELINE + suffix, "rank1"), stats(preset, UPPER + suffix, "rank1")
        closed = "–"
        seeds_in = lambda name: sum(s in rows.get((preset, name), {}) for s in seeds)  # noqa: E731

        def verdict(other):
            # One seed has no spread to compare; a row is not compared with itself or with the two ends.
            if variant in (BASELINE, UPPER) or other == variant or min(seeds_in(label), seeds_in(other + suffix)) < 2:
                return "–"
            return "yes" if separated(r1, stats(preset, other + suffix, "rank1")) else "no"

        if variant not in (BASELINE, UPPER) and not math.isnan(base[0]) and not math.isnan(upper[0]):
            g = gap_closed(r1[0], base[0], upper[0])
            closed = "–" if math.isnan(g) else f"{100 * g:.0f}%"
        verdicts = "".join(f" {verdict(other)} |" for other in above)
        lines.append(f"| {preset} | {label} | {_pm(r1)} | {_pm(m)} | {per_seed} | {closed} | {verdict(BASELINE)} |{verdicts}")
    return "\n".join(lines)


def _pm(stat: tuple[float, float]) -> str:
    return "–" if math.isnan(stat[0]) else f"{stat[0]:.1f} ± {stat[1]:.1f}"


def paired(a: Mapping[int, Mapping], b: Mapping[int, Mapping], *, resamples: int = 10000,
           rng_seed: int = 0) -> dict:
    """Row A's R-1 against row B's on the seeds both have, query by query.

    a, b: {seed: per-query outcomes} (svreid_jax.evaluation.protocols.per_query: 'query' keys and
    'first_match_rank', −1 for a query with no good match). Returns {'seeds': [...], 'per_seed': [ΔR-1 in
    points, A − B, per seed], 'delta': their mean, 'interval': (2.5th, 97.5th percentile) of the mean
    ΔR-1 over `resamples` two-level bootstrap draws (the seeds drawn with replacement, then the queries
    with replacement, the same queries in every drawn seed; numpy's default_rng(rng_seed)), 'a_only' /
    'b_only': the (seed, query) pairs only A / only B ranks first}. ValueError, naming the seed, when the
    two rows or two seeds were tested on different queries, or when no seed is shared.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common (A has {sorted(a)}, B has {sorted(b)})")
    queries = list(a[seeds[0]]["query"])
    hits = []
    for s in seeds:
        for name, row in (("A", a), ("B", b)):
            if list(row[s]["query"]) != queries:
                raise ValueError(f"seed {s}: row {name} was tested on other queries than row A seed {seeds[0]}; "
                                 "pairing needs the same test set")
        rank_a, rank_b = (np.asarray(row[s]["first_match_rank"]) for row in (a, b))
        if not np.array_equal(rank_a >= 0, rank_b >= 0):
            raise ValueError(f"seed {s}: the two rows disagree on which queries have a good match; "
                             "pairing needs the same test labels")
        hits.append((rank_a == 0, rank_b == 0, rank_a >= 0))
    matched = hits[0][2]
    if not matched.any():
        raise ValueError("no query has a good match")
    diff = np.stack([ha[matched].astype(np.float64) - hb[matched] for ha, hb, _ in hits])  # [S, Q]
    per_seed = 100 * diff.mean(axis=1)
    rng = np.random.default_rng(rng_seed)
    num_seeds, num_queries = diff.shape
    seed_counts = rng.multinomial(num_seeds, np.full(num_seeds, 1 / num_seeds), size=resamples)  # [R, S]
    query_counts = rng.multinomial(num_queries, np.full(num_queries, 1 / num_queries), size=resamples)  # [R, Q]
    draws = 100 * np.einsum("rs,sq,rq->r", seed_counts, diff, query_counts) / (num_seeds * num_queries)
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"seeds": seeds, "per_seed": [float(v) for v in per_seed], "delta": float(per_seed.mean()),
            "interval": (float(low), float(high)), "a_only": int((diff > 0).sum()), "b_only": int((diff < 0).sum())}


def paired_table(results: Sequence[tuple[str, str, str, dict]]) -> str:
    """The markdown table of `paired` results: (preset, row A, row B, result) each."""
    lines = ["| preset | A − B | seeds | ΔR-1 per seed | ΔR-1 | 95% interval (seeds and queries resampled) "
             "| pairs only A / only B ranks first |", "|---|---|---|---|---|---|---|"]
    for preset, first, second, r in results:
        per_seed = ", ".join(f"{v:+.1f}" for v in r["per_seed"])
        lines.append(f"| {preset} | {first} − {second} | {', '.join(map(str, r['seeds']))} | {per_seed} | "
                     f"{r['delta']:+.1f} | {r['interval'][0]:+.1f} … {r['interval'][1]:+.1f} | "
                     f"{r['a_only']} / {r['b_only']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Runs


def eval_tag(options: Sequence[str]) -> str:
    """'camera_normalise=True' style label of a set of --eval-option values ('' for none)."""
    return ", ".join(options)


def known_variants(variants: Sequence[str]) -> list[str]:
    """The variants configs/demo.py knows; the others are skipped with a message."""
    sys.path.insert(0, REPO)
    from configs import demo

    out = []
    for variant in variants:
        try:
            demo.get_config(variant.replace("+", ","))
        except ValueError as e:
            print(f"skipping variant {variant!r}: configs/demo.py does not know it ({e})", flush=True)
            continue
        out.append(variant)
    return out


def plan(args) -> list[dict]:
    """One entry per run: {'preset', 'variant', 'seed', 'workdir', 'command', 'kind': 'train'|'eval', 'result',
    'per_query' (where its per-query outcomes are), 'label'}."""
    root = os.path.abspath(args.root)
    options = [f"--config.eval.{o}" for o in args.eval_option]
    runs = []
    for preset in args.presets:
        for variant in args.variants:
            for seed in args.seeds:
                workdir = os.path.join(root, preset, variant, f"s{seed}")
                base = [sys.executable, "-m", "svreid_jax.main", f"--config=configs/demo.py:{variant.replace('+', ',')}{PRESETS[preset]}",
                        f"--config.seed={seed}",
                        f"--config.data.demo_root={os.path.join(root, DATA_FOLDERS.get(preset, 'data'))}",
                        f"--workdir={workdir}"]
                train_options = [] if args.eval_rows else options
                runs.append(dict(preset=preset, variant=variant, seed=seed, workdir=workdir, kind="train",
                                 command=base + train_options, result=os.path.join(workdir, "results.json"),
                                 per_query=os.path.join(workdir, PER_QUERY),
                                 label=variant if args.eval_rows or not options else f"{variant} + {eval_tag(args.eval_option)}"))
                if args.eval_rows and options:
                    tag = eval_tag(args.eval_option)
                    safe = "".join(ch if ch.isalnum() else "_" for ch in tag)
                    runs.append(dict(preset=preset, variant=variant, seed=seed, workdir=workdir, kind="eval",
                                     command=base + ["--mode=eval"] + options,
                                     result=os.path.join(workdir, f"eval_{safe}.json"),
                                     per_query=os.path.join(workdir, f"eval_{safe}_per_query.json"),
                                     label=f"{variant} + {tag}"))
    return runs


def _done(run: dict) -> dict | None:
    """The metrics of a finished run made by this same command, else None."""
    try:
        with open(os.path.join(run["workdir"], RECORD), encoding="utf-8") as f:
            recorded = json.load(f).get(run["kind"])
        with open(run["result"], encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    if recorded != run["command"][1:]:  # the interpreter path may differ between machines
        return None
    metrics = result.get("metrics", result)  # eval_results.json nests them
    return metrics if "rank1" in metrics else None


def _execute(run: dict) -> dict | None:
    os.makedirs(run["workdir"], exist_ok=True)
    written = os.path.join(run["workdir"], "eval_per_query.json")
    if run["kind"] == "eval" and os.path.exists(written):
        os.remove(written)  # an earlier evaluation's: only this one's may become this row's
    log = os.path.join(run["workdir"], f"benchmark_{run['kind']}.log")
    with open(log, "w", encoding="utf-8") as f:
        rc = subprocess.call(run["command"], cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        print(f"  failed (exit {rc}); see {log}", flush=True)
        return None
    if run["kind"] == "eval":
        os.replace(os.path.join(run["workdir"], "eval_results.json"), run["result"])
        if os.path.exists(written):
            os.replace(written, run["per_query"])
    path = os.path.join(run["workdir"], RECORD)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = {}
    record[run["kind"]] = run["command"][1:]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    return _done(run)


def _paired_rows(pairs, args, outcomes) -> list[tuple[str, str, str, dict]]:
    """`paired` for each pair, preset and evaluation (as trained, and re-evaluated with --eval-rows)."""
    suffixes = [""] + ([f" + {eval_tag(args.eval_option)}"] if args.eval_rows and args.eval_option else [])
    out = []
    for preset in args.presets:
        for suffix in suffixes:
            for first, second in pairs:
                files = [outcomes.get((preset, name + suffix), {}) for name in (first, second)]
                loaded, missing = [], []
                for row in files:
                    loaded.append({})
                    for seed, path in row.items():
                        try:
                            with open(path, encoding="utf-8") as f:
                                loaded[-1][seed] = json.load(f)
                        except (OSError, ValueError):
                            missing.append(path)
                what = f"{preset} {first}{suffix} − {second}{suffix}"
                if missing:
                    print(f"paired {what}: no per-query outcomes in {missing[0]} (a run from before they were "
                          "written: re-evaluate it with --eval-rows)", flush=True)
                    continue
                try:
                    out.append((preset, first + suffix, second + suffix, paired(*loaded)))
                except ValueError as err:
                    print(f"paired {what}: {err}", flush=True)
    return out


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="demo,hard", help="comma-separated: demo, hard, demo_large, hard_large")
    parser.add_argument("--variants", default="source_only,paper,plus,oracle", help="configs/demo.py variants")
    parser.add_argument("--seeds", default="0,1,2", help="comma- or space-separated training seeds")
    parser.add_argument("--root", default="runs/adaptation", help="where the runs (and the shared demo data) go")
    parser.add_argument("--eval-option", action="append", default=[], metavar="NAME=VALUE",
                        help="evaluation option for every variant alike, as --config.eval.NAME=VALUE (repeatable)")
    parser.add_argument("--eval-rows", action="store_true",
                        help="train without the eval options and add rows re-evaluating each checkpoint with them")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")
    parser.add_argument("--table-only", action="store_true",
                        help="print the table of the runs already finished by these commands; train nothing")
    parser.add_argument("--paired", action="append", default=[], metavar="A:B",
                        help="compare row A with row B query by query on the same seeds (repeatable; both in --variants)")
    parser.add_argument("--above", default="", help="comma-separated variants: a column each testing whether a "
                        "row's mean − std lies above that variant's mean + std (as the one for source only)")
    args = parser.parse_args(argv)
    args.presets = [p for p in args.presets.split(",") if p]
    unknown = [p for p in args.presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; expected {sorted(PRESETS)}")
    args.seeds = [int(s) for s in args.seeds.replace(",", " ").split()]
    args.variants = known_variants([v for v in args.variants.split(",") if v])
    for option in args.eval_option:
        if "=" not in option:
            parser.error(f"--eval-option {option!r}: expected NAME=VALUE")
    pairs = [tuple(p.split(":")) for p in args.paired]
    for pair, text in zip(pairs, args.paired):
        if len(pair) != 2 or any(v not in args.variants for v in pair):
            parser.error(f"--paired {text!r}: expected A:B with both A and B among --variants ({','.join(args.variants)})")

    runs = plan(args)
    if args.dry_run:
        for run in runs:
            print(shlex.join(["python"] + run["command"][1:]))
        return 0

    rows: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    outcomes: dict[tuple[str, str], dict[int, str]] = {}  # (preset, label) → {seed: its per-query file}
    for run in runs:  # rows in plan order: preset, then variant, then its re-evaluated row
        rows.setdefault((run["preset"], run["label"]), {})
    to_run = [r for r in runs if _done(r) is None]
    print(f"{len(runs)} runs, {len(runs) - len(to_run)} already done, {len(to_run)} to run", flush=True)
    took: dict[str, list[float]] = {"train": [], "eval": []}  # seconds of the runs made so far, by kind
    ran = 0
    trained: dict[str, bool] = {}  # workdir → whether its training finished
    for i, run in enumerate(runs, start=1):
        what = f"[{i}/{len(runs)}] {run['preset']} {run['label']} seed {run['seed']}"
        if args.table_only and _done(run) is None:
            print(f"{what}: not run (--table-only)", flush=True)
            continue
        if run["kind"] == "eval" and not trained.get(run["workdir"], False):
            # Re-evaluating the checkpoint of an unfinished or refused training would give a row of a
            # half-trained model (an older eval file in the workdir, too).
            print(f"{what}: skipped, its training did not finish", flush=True)
            continue
        metrics = _done(run)
        if metrics is None:
            # A re-evaluation takes seconds and a training minutes: estimate each kind by its own runs.
            known = {k: sum(v) / len(v) for k, v in took.items() if v}
            left = to_run[ran:]
            eta = ""
            if all(r["kind"] in known for r in left):
                eta = f", ETA {_clock(sum(known[r['kind']] for r in left))} for {len(left)} runs"
            print(f"{what}: {run['kind']}{eta}", flush=True)
            start = time.perf_counter()
            metrics = _execute(run)
            took[run["kind"]].append(time.perf_counter() - start)
            ran += 1
            print(f"  {took[run['kind']][-1]:.0f} s", flush=True)
        if run["kind"] == "train":
            trained[run["workdir"]] = metrics is not None
        if metrics is not None:
            rows[(run["preset"], run["label"])][run["seed"]] = metrics
            outcomes.setdefault((run["preset"], run["label"]), {})[run["seed"]] = run["per_query"]
            print(f"{what}: R-1 {100 * metrics['rank1']:.1f} mAP {100 * metrics['mAP']:.1f}", flush=True)
    text = table({key: runs for key, runs in rows.items() if runs}, args.seeds,
                 above=[v for v in args.above.split(",") if v])
    if pairs:
        text += "\n\n" + paired_table(_paired_rows(pairs, args, outcomes))
    print(text, flush=True)
    os.makedirs(args.root, exist_ok=True)
    with open(os.path.join(args.root, "adaptation.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
