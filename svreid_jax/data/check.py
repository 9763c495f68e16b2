"""Check a dataset folder and print the statistics that papers report.

  python -m svreid_jax.data.check --dataset=NAME --root=DIR [--split_id=K] [--option key=value ...]
                                  [--frames [--workers=N]]

The reader validates the whole layout (every list line, every frame folder); a problem is printed
as the reader's one-sentence error, without a traceback, and the exit code is 1. Otherwise a table
per split gives identities, tracklets, frames, cameras, clothes and the min / median / max tracklet
length, followed by what the reader dropped (e.g. MARS junk rows) and how many queries have no
gallery tracklet of their identity in another camera (the evaluation skips those).

Files of a tracklet folder that are not frames (.jpg/.jpeg/.png) are listed as left out. With
--frames every frame of every split is also decoded, as training decodes it, on --workers threads
with progress and ETA on stderr; each frame that cannot be read is listed with its path and the
reason, and the exit code is 1 if there is any.

Options are the reader's keyword arguments (`datasets.options(name)`); values are parsed as
int, float, true/false or none where they look like one, else kept as strings.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np
from absl import flags

from svreid_jax.data import datasets, decode
from svreid_jax.data.datasets import _common
from svreid_jax.data.records import DatasetError, DatasetSplits, FrameError, Tracklet
from svreid_jax.utils import progress

USAGE = ("python -m svreid_jax.data.check --dataset=NAME --root=DIR [--split_id=K] [--option key=value ...] "
         "[--frames [--workers=N]]")
_COLUMNS = ("split", "identities", "tracklets", "frames", "cameras", "clothes", "min len", "median len", "max len")


def define_flags(flag_values: flags.FlagValues) -> flags.FlagValues:
    """The flags shared by `check` and `pack`, defined on `flag_values` (not the global FLAGS, so
    these modules can be imported next to other absl programs)."""
    flags.DEFINE_string("dataset", None, f"Dataset name, one of: {', '.join(datasets.names())}.",
                        flag_values=flag_values)
    flags.DEFINE_string("root", None, "The dataset's root folder.", flag_values=flag_values)
    flags.DEFINE_integer("split_id", None, "Shortcut for --option split_id=K (ilidsvid, prid).",
                         flag_values=flag_values)
    flags.DEFINE_multi_string("option", [], "A reader option as key=value, repeatable; e.g. cut_length=48, "
                              "gallery=include_query, split=all.", flag_values=flag_values)
    return flag_values


def define_frame_flags(flag_values: flags.FlagValues) -> flags.FlagValues:
    """The flags only `check` has."""
    flags.DEFINE_boolean("frames", False, "Also decode every frame and list the ones that cannot be decoded.",
                         flag_values=flag_values)
    flags.DEFINE_integer("workers", 0, "--frames: decoding threads (0 = one per CPU).", flag_values=flag_values)
    return flag_values


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str], usage: str) -> int | None:
    """Parse argv (argv[0] is the program) into flag_values.

    Returns None to go on, or the exit code after printing help (0, stdout) or a usage error (2, stderr).
    """
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
        print(f"usage: {usage}\n\n{flag_values.get_help(include_special_flags=False)}")
        return 0
    try:
        rest = flag_values(list(argv))
        if len(rest) > 1:
            raise flags.Error(f"unexpected arguments: {rest[1:]}")
        missing = [f"--{n}" for n in ("dataset", "root") if flag_values[n].value is None]
        if missing:
            raise flags.Error(f"{' and '.join(missing)} must be given")
    except flags.Error as e:
        print(f"error: {e}\nusage: {usage}", file=sys.stderr)
        return 2
    return None


def parse_value(text: str) -> Any:
    """'48' → 48, '0.5' → 0.5, 'true'/'false' → bool, 'none'/'null' → None, anything else unchanged."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def reader_options(option_flags: Sequence[str], split_id: int | None) -> dict[str, Any]:
    """{key: value} from --option key=value strings (and --split_id); malformed → ValueError."""
    options: dict[str, Any] = {}
    for item in option_flags:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {item!r}: expected key=value")
        options[key.strip()] = parse_value(value)
    if split_id is not None:
        options["split_id"] = split_id
    return options


# ---------------------------------------------------------------------------------------------
# Statistics


@dataclasses.dataclass(frozen=True)
class SplitStats:
    identities: int
    tracklets: int
    frames: int
    cameras: int
    clothes: int | None  # None when the split has no clothes labels
    min_len: int
    median_len: float
    max_len: int


def split_stats(tracklets: Sequence[Tracklet]) -> SplitStats:
    lengths = np.array([len(t) for t in tracklets], np.int64)
    clothes = {t.clothes_id for t in tracklets if t.clothes_id is not None}
    return SplitStats(
        identities=len({t.pid for t in tracklets}), tracklets=len(tracklets), frames=int(lengths.sum()),
        cameras=len({t.camid for t in tracklets}), clothes=len(clothes) if clothes else None,
        min_len=int(lengths.min()) if len(lengths) else 0,
        median_len=float(np.median(lengths)) if len(lengths) else 0.0,
        max_len=int(lengths.max()) if len(lengths) else 0,
    )


def unmatched_queries(splits: DatasetSplits) -> int:
    """Queries with no gallery tracklet of the same pid from another camera (skipped by the ranking)."""
    cameras: dict[int, set[int]] = {}
    for g in splits.gallery:
        cameras.setdefault(g.pid, set()).add(g.camid)
    return sum(not (cameras.get(q.pid, set()) - {q.camid}) for q in splits.query)


def _number(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.1f}".rstrip("0").rstrip(".")
    return f"{x:,}"


# ---------------------------------------------------------------------------------------------
# Frames


def _decode_problem(path: str) -> str | None:
    """None if the frame decodes (as the training pipeline decodes it), else why not."""
    try:
        decode.load_frame(path, 8, 8)
    except FrameError as e:
        return str(e)
    return None


def check_frames(splits: DatasetSplits, workers: int, err: TextIO, *, report_every_sec: float = 5.0,
                 block: int = 4096) -> tuple[int, list[str]]:
    """Decode every distinct frame of the three splits on `workers` threads (decoders release the GIL).

    Progress lines (frames/s, ETA) go to `err` every `report_every_sec`. Returns (frames checked,
    one 'cannot …' message per undecodable frame, in dataset order).
    """
    paths = list(dict.fromkeys(f for split in splits for t in split for f in t.frames))
    problems: list[str] = []
    start = last = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for lo in range(0, len(paths), block):  # in blocks, so millions of frames do not queue at once
            problems.extend(p for p in pool.map(_decode_problem, paths[lo:lo + block]) if p is not None)
            now, done = time.perf_counter(), min(lo + block, len(paths))
            if now - last >= report_every_sec and done < len(paths):
                last, rate = now, done / (now - start)
                print(f"frames: {done:,}/{len(paths):,} ({100 * done / len(paths):.0f}%), {rate:,.0f} frames/s, "
                      f"elapsed {progress.format_duration(now - start)}, "
                      f"ETA {progress.format_duration((len(paths) - done) / rate)}", file=err, flush=True)
    return len(paths), problems


def report(name: str, root: str, options: dict[str, Any], splits: DatasetSplits, stats: Any) -> str:
    """The printed report: header, the table per split, the reader's counts and the query check."""
    rows = []
    per_split = {s: split_stats(getattr(splits, s)) for s in ("train", "query", "gallery")}
    for s, st in per_split.items():
        rows.append((s, st.identities, st.tracklets, st.frames, st.cameras, st.clothes, st.min_len, st.median_len,
                     st.max_len))
    everything = tuple(splits.train) + tuple(splits.query) + tuple(splits.gallery)
    test_ids = len({t.pid for t in tuple(splits.query) + tuple(splits.gallery)})
    total = split_stats(everything)
    # Training pids are relabelled and test pids are raw, so the total counts them apart.
    rows.append(("total", per_split["train"].identities + test_ids, total.tracklets, total.frames, total.cameras,
                 None, total.min_len, total.median_len, total.max_len))
    cells = [_COLUMNS] + [tuple(_number(x) if i else x for i, x in enumerate(r)) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_COLUMNS))]
    lines = [f"dataset {name} at {root}" + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})"
                                            if options else "")]
    for k, c in enumerate(cells):
        lines.append("  ".join(c[0].ljust(widths[0]) if i == 0 else c[i].rjust(widths[i]) for i in range(len(c))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("  (total: the three rows together, identities = train + distinct query/gallery pids; a gallery "
                 "that includes the queries counts them twice)")
    if stats is not None:
        lines.append(f"reader counts ({type(stats).__name__}):")
        lines.extend(f"  {f.name}: {_number(getattr(stats, f.name))}" for f in dataclasses.fields(stats))
    if splits.query:
        lines.append(f"queries without a same-identity gallery tracklet from another camera: "
                     f"{unmatched_queries(splits):,} of {len(splits.query):,} (the ranking skips them)")
    return "\n".join(lines)


def run(name: str, root: str, options: dict[str, Any], out: TextIO | None = None,
        err: TextIO | None = None, *, frames: bool = False, workers: int = 0) -> int:
    """Read and report (and with `frames`, decode every frame on `workers` threads, 0 = one per CPU).

    0 on success, 1 (messages on err, no traceback) if the dataset cannot be read or a frame cannot be
    decoded.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        with _common.collect_ignored() as ignored:
            splits, stats = datasets.load_with_stats(name, root, **options)
    except (DatasetError, ValueError, TypeError) as e:  # TypeError: an option of the wrong type
        print(f"error: {e}", file=err)
        return 1
    print(report(name, root, options, splits, stats), file=out)
    if ignored:
        print(f"left out {len(ignored):,} file(s) in tracklet folders that are not "
              f"{'/'.join(_common.FRAME_EXTENSIONS)} frames:", file=out)
        print("\n".join(f"  {path}" for path in ignored), file=out)
    if not frames:
        return 0
    checked, problems = check_frames(splits, workers or os.cpu_count() or 1, err)
    print(f"frames: decoded {checked - len(problems):,} of {checked:,}", file=out)
    for message in problems:
        print(f"error: {message}", file=err)
    if problems:
        print(f"error: {len(problems):,} frame(s) cannot be decoded (listed above)", file=err)
        return 1
    return 0


def main(argv: Sequence[str]) -> int:
    """Command line entry point; argv[0] is the program name. Returns the exit code."""
    fv = define_frame_flags(define_flags(flags.FlagValues()))
    code = parse_flags(fv, argv, USAGE)
    if code is not None:
        return code
    try:
        options = reader_options(fv.option, fv.split_id)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run(fv.dataset, fv.root, options, frames=fv.frames, workers=fv.workers)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
