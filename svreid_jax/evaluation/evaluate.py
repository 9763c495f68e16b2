"""Query/gallery evaluation of a model (during training and `--mode=eval`) and the results tables."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from svreid_jax import builders, parallel
from svreid_jax.data import datasets, pack, pipeline
from svreid_jax.data.records import DatasetSplits, Tracklet
from svreid_jax.evaluation import evaluators, features, protocols, ranking


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """The evaluation setup of one run, built once (`from_config`): how evaluation clips are cut
    (eval.temporal, eval.seq_len, no flip) and batched (batch_size, num_threads: features.eval_sizing),
    the eval forward, how distances are made (eval.distance, eval.rerank), the target's protocol
    (data.target.protocol) and eval.camera_normalise.

    evaluator(variables, splits) → the query/gallery metrics; evaluator.features(variables, tracklets)
    → float32 [N, D] features of any tracklets with the same clips (plus's per-epoch clustering).
    """

    model: Any
    mesh: Any
    spec: pipeline.ClipSpec
    distance: protocols.DistanceSpec
    protocol: Callable[[evaluators.ProtocolInputs], dict]
    protocol_options: dict
    batch_size: int
    temporal: str
    num_threads: int
    flip_average: bool
    max_rank: int
    camera_normalise: bool
    use_teacher: bool

    @classmethod
    def from_config(cls, config, model, mesh=None) -> "Evaluator":
        e = config.eval
        mesh = parallel.data_mesh() if mesh is None else mesh
        batch_size, num_threads = features.eval_sizing(config, mesh)
        return cls(model=model, mesh=mesh,
                   spec=builders.clip_spec(config, train=False), distance=protocols.DistanceSpec.from_config(config),
                   protocol=evaluators.get(config.data.target.protocol),
                   protocol_options=config.data.target.options.to_dict(), batch_size=batch_size,
                   temporal=e.temporal, num_threads=num_threads, flip_average=bool(e.flip_average),
                   max_rank=e.max_rank, camera_normalise=bool(e.camera_normalise), use_teacher=bool(e.use_teacher))

    def variables(self, state) -> dict:
        """{'params', 'batch_stats'} of a train state that evaluation uses: the student's, or the EMA
        teacher's with eval.use_teacher."""
        if self.use_teacher:
            return {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
        return {"params": state.params, "batch_stats": state.batch_stats}

    def features(self, variables, tracklets: Sequence[Tracklet], progress=None, temporal: str | None = None) -> np.ndarray:
        """float32 [N, D] features of `tracklets` (features.extract with this setup's clips; `temporal`, when
        given, cuts them another way: data.sampling.EVAL_TEMPORAL_METHODS)."""
        return features.extract(features.make_embed_step(self.model), variables, tracklets, spec=self.spec,
                                batch_size=self.batch_size, method=temporal or self.temporal, mesh=self.mesh,
                                num_threads=self.num_threads, flip_average=self.flip_average, progress=progress)

    def __call__(self, variables, splits: DatasetSplits, *, all_protocols: bool = False) -> dict[str, float]:
        """The metrics of `rank` without the per-query outcomes."""
        return self.rank(variables, splits, all_protocols=all_protocols)[0]

    def rank(self, variables, splits: DatasetSplits, *, all_protocols: bool = False) -> tuple[dict[str, float], dict | None]:
        """Query/gallery evaluation: ({'rank1','rank5','rank10','rank20','mAP','num_valid_queries', 'extract_sec', ...},
        the primary protocol's per-query outcomes (protocols.per_query), or None for a protocol that gives none).

        With camera_normalise every feature first loses its camera's mean over the query and gallery
        features (protocols.camera_normalised), and the metrics carry 'camera_normalised': 1.0 so that
        results.json records it. Features with a NaN or inf, or a query or gallery set of zero vectors
        only, raise features.FeatureError before any metric is computed; a few zero-norm features are
        counted in 'zero_norm_query' / 'zero_norm_gallery' (absent when 0). With `all_protocols` the
        protocol's other results are added as '<protocol>/<metric>' keys (e.g. the MARS include_query and
        all galleries, CCVID SC/CC); the unprefixed keys are always the primary protocol (the authors').
        """
        start = time.perf_counter()
        feats = self.features(variables, pack.join(splits.query, splits.gallery))
        extract_sec = time.perf_counter() - start
        nq = len(splits.query)
        q_feats, g_feats = feats[:nq], feats[nq:]
        # NaN/inf or all-zero features would rank by gallery order and still give R-1/mAP above zero.
        zero_norm = features.check_features({"query": q_feats, "gallery": g_feats})
        if self.camera_normalise:
            q_feats, g_feats = protocols.camera_normalised(q_feats, g_feats, splits.query, splits.gallery)
        inputs = evaluators.ProtocolInputs(q_feats, g_feats, splits.query, splits.gallery, distance=self.distance,
                                           max_rank=self.max_rank, all_protocols=all_protocols,
                                           options=self.protocol_options)
        results = self.protocol(inputs)
        metrics = protocols.flatten(results)
        metrics["extract_sec"] = extract_sec
        metrics.update({f"zero_norm_{name}": float(count) for name, count in zero_norm.items()})
        if self.camera_normalise:
            metrics["camera_normalised"] = 1.0
        name, primary = next(iter(results.items()))
        outcomes = protocols.per_query(primary, splits.query, name) if isinstance(primary, ranking.RankingResult) else None
        return metrics, outcomes


def evaluate(config, model, variables, splits: DatasetSplits, mesh, *, all_protocols: bool = False) -> dict[str, float]:
    """One evaluation with a setup built for it (`Evaluator`); a loop that evaluates often builds its
    Evaluator once instead."""
    return Evaluator.from_config(config, model, mesh)(variables, splits, all_protocols=all_protocols)


def results_table(metrics: dict[str, float], title: str, primary: str | None = None) -> str:
    """A markdown table of R-1/5/10/20 and mAP in percent, one row per protocol of `metrics`.

    The first row holds the unprefixed metrics, labelled `primary` (default: 'target', or the protocol
    name when other protocols are present); '<protocol>/<metric>' keys make the other rows.
    """
    rows, std = protocols.unflatten(metrics, primary)
    return protocols.markdown_table(rows, title, std)


def evaluate_checkpoint(config, workdir: str) -> dict[str, float]:
    """--mode=eval: evaluate the checkpoint of workdir (eval.checkpoint) on the target test split.

    Prints the table and writes <workdir>/eval_results.json and eval_results.md: one row per protocol
    (evaluate(..., all_protocols=eval.protocols)), or with eval.one_checkpoint_all_splits (targets whose
    reader takes a `split_id`: iLIDS-VID, PRID) this one checkpoint tested on split_id 0..9, one row per
    split under their mean ± std, labelled transductive: the checkpoint adapted to one split's training
    persons, many of whom are test persons of the other splits (the standard protocol, one model per
    split, is --mode=splits). Returns the flat metrics (for the splits: the means, 'std/<metric>' and
    'split_<i>/<metric>'). Without the splits, eval_per_query.json gets each query's outcome under the
    primary protocol (protocols.per_query).
    """
    parallel.log_devices()
    mesh = parallel.data_mesh()
    model, variables, ckpt = builders.restore_variables(config, workdir, mesh)
    evaluator = Evaluator.from_config(config, model, mesh)
    distance = evaluator.distance
    name = config.data.target.name
    primary, outcomes = None, None
    if config.eval.one_checkpoint_all_splits:
        if "split_id" not in datasets.options(name):
            raise ValueError(f"eval.one_checkpoint_all_splits tests one checkpoint on the 10 train/test splits of a "
                             f"target whose reader takes a split_id (iLIDS-VID, PRID); target {name!r} has none")
        trained_on = config.data.target.options.get("split_id", 0)
        logging.warning("eval.one_checkpoint_all_splits: one checkpoint, adapted on the training persons of split "
                        "%d, is tested on every split; in the others part of the test persons were its unlabelled "
                        "target training data (transductive). The standard protocol trains one model per split: "
                        "--mode=splits.", trained_on)

        def checked_features(tracklets):
            feats = evaluator.features(variables, tracklets)
            features.check_features({"test": feats})
            return feats

        result = protocols.evaluate_splits(
            lambda s: builders.load_target(config, workdir, split_id=s), checked_features,
            distance=distance, max_rank=config.eval.max_rank, camera_normalise=bool(config.eval.camera_normalise))
        metrics = result.flat()
        primary = f"one checkpoint on {len(result.split_ids)} splits, transductive: mean ± std"
    else:
        target = builders.load_target(config, workdir)
        metrics, outcomes = evaluator.rank(variables, target, all_protocols=config.eval.protocols)
    title = f"{config.data.source.name} → {name}"
    table = results_table(metrics, title, primary)
    rows, std = protocols.unflatten(metrics, primary)
    settings = (f"checkpoint {ckpt.directory} step {ckpt.step} ({'EMA teacher' if ckpt.teacher else 'student'}); "
                f"distance: {distance.describe()}; clips: {config.eval.temporal}, {config.eval.seq_len} frames"
                f"{', flip-averaged' if config.eval.flip_average else ''}"
                f"{'; features camera-normalised' if config.eval.camera_normalise else ''}")
    report = {"title": title, "checkpoint": dataclasses.asdict(ckpt), "distance": distance.describe(),
              "clips": {"temporal": config.eval.temporal, "seq_len": config.eval.seq_len,
                        "flip_average": bool(config.eval.flip_average)},
              "camera_normalise": bool(config.eval.camera_normalise), "protocols": rows, "metrics": metrics}
    if std is not None:
        report["std"] = std
    if jax.process_index() == 0:
        protocols.write_results(workdir, "eval_results", report, f"{table}\n\n{settings}\n")
        if outcomes is not None:
            protocols.write_per_query(workdir, "eval_per_query", outcomes)
    print(table, flush=True)
    print(settings, flush=True)
    return metrics
