"""`--mode=export --out=DIR`: the embedding of a trained model as files that need no config file, no
checkpoint and no svreid_jax model code to run (`Embedder.from_export(DIR)`, or any jax.export reader).

DIR gets (evaluation/embedder.py describes them):

  embed.stablehlo     jax.export serialization: (variables, uint8 clips [b, T, H, W, 3]) → float32 [b, D],
                      with a symbolic batch size b, lowered for CPU and CUDA (and the platform it was
                      written on); flip averaging (eval.flip_average) is inside
  model.safetensors   the variables it takes: params + batch_stats of the student or, with
                      eval.use_teacher, the EMA teacher ('/'-joined names, float32)
  config.json         {"format": "svreid_jax.export", "format_version", "input": {clip_len, height,
                      width, channels, dtype}, "output": {embedding_dim, dtype}, "dtype" (compute),
                      "flip_average", "use_teacher", "temporal", "platforms", the checkpoint it came from,
                      "config": the run config as JSON}

Why the variables are arguments rather than constants baked into the StableHLO: the weights are
stored once (model.safetensors serves other tools and the function alike, instead of two copies of a
ResNet-50's 100 MB), the serialized function stays small, and XLA does not constant-fold the weights
into the program when it compiles. The price is that loading needs both files; from_export checks
every tensor's name, shape and dtype against the function's inputs.

Writing is atomic (utils/atomic.py): everything goes to a hidden staging folder next to DIR, which
then takes DIR's place, so DIR is never half written. DIR may be missing, empty, or an earlier export
(config.json of this format), which is replaced whole; any other non-empty DIR is refused, so an
export never deletes files it did not write.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import safetensors.numpy

from svreid_jax.evaluation import embedder as embedder_lib
from svreid_jax.evaluation.embedder import (CONFIG_FILE, FORMAT, FORMAT_VERSION, FUNCTION_FILE, VARIABLES_FILE,
                                            Embedder, ExportError)
from svreid_jax.utils import atomic

# jax lowers for platforms other than the one it runs on, so an export written on a CPU machine runs on a GPU.
PLATFORMS = ("cpu", "cuda")


def check_out_dir(out_dir: str) -> str:
    """`out_dir` as an absolute path if an export may be written there; else ExportError (see the module docstring)."""
    if not out_dir:
        raise ExportError("--mode=export needs --out=<folder to write the export to>")
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"--out={out_dir} is a file; expected a new or empty folder, or an earlier export")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not _is_export(out_dir):
        raise ExportError(f"--out={out_dir} exists, is not empty and holds no earlier export ({CONFIG_FILE} of format "
                          f"{FORMAT}); choose a new or empty folder")
    return out_dir


def _is_export(folder: str) -> bool:
    try:
        with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def export_embedder(embedder: Embedder, out_dir: str, platforms: tuple[str, ...] | None = None) -> dict:
    """Write `embedder`'s function, variables and config.json to `out_dir` (atomically); return config.json's dict."""
    out_dir = check_out_dir(out_dir)
    platforms = tuple(dict.fromkeys((*(platforms or PLATFORMS), jax.export.default_export_platform())))
    variables = jax.device_get(embedder.variables)
    arg_specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
    (batch,) = jax.export.symbolic_shape("b")
    clips = jax.ShapeDtypeStruct((batch, *embedder.clip_shape, 3), jnp.uint8)
    exported = jax.export.export(jax.jit(embedder.clip_function()), platforms=platforms)(arg_specs, clips)
    try:
        blob = exported.serialize()
    except ImportError as err:  # jax writes the serialization with flatbuffers, an optional dependency of jax
        raise ExportError(f"writing {FUNCTION_FILE} needs the 'flatbuffers' package ({err})") from None
    config = embedder.config
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "function": FUNCTION_FILE,
        "variables": VARIABLES_FILE,
        "input": {"shape": ["b", *embedder.clip_shape, 3], "clip_len": embedder.clip_shape[0],
                  "height": embedder.clip_shape[1], "width": embedder.clip_shape[2], "channels": "RGB",
                  "dtype": "uint8"},
        "output": {"shape": ["b", embedder.embedding_dim], "embedding_dim": embedder.embedding_dim,
                   "dtype": "float32"},
        "embedding_dim": embedder.embedding_dim,
        "dtype": str(config.model.dtype),
        "flip_average": bool(config.eval.flip_average),
        "use_teacher": bool(config.eval.use_teacher),
        "temporal": str(config.eval.temporal),
        "platforms": list(exported.platforms),
        "checkpoint": embedder.source.get("checkpoint"),
        "step": embedder.source.get("step"),
        "teacher": embedder.source.get("teacher"),
        "config": json.loads(config.to_json_best_effort()),
    }
    with atomic.replaced_directory(out_dir) as staging:
        safetensors.numpy.save_file(embedder_lib.flatten_variables(variables), os.path.join(staging, VARIABLES_FILE),
                                    metadata={"format": FORMAT})
        with open(os.path.join(staging, FUNCTION_FILE), "wb") as f:
            f.write(blob)
        # config.json last: a folder with it is a complete export (the staging folder is never seen half
        # written anyway; this keeps a copied-by-hand folder honest too).
        with open(os.path.join(staging, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
    return meta


def run_export(config, workdir: str, out_dir: str) -> dict:
    """--mode=export: the model --mode=eval would evaluate (eval.checkpoint, eval.use_teacher) into `out_dir`."""
    out_dir = check_out_dir(out_dir)  # before restoring: a refused --out costs nothing
    embedder = Embedder.from_config(config, workdir)
    meta = export_embedder(embedder, out_dir)
    print(f"exported the embedding (uint8 [b, {', '.join(map(str, embedder.clip_shape))}, 3] → float32 "
          f"[b, {meta['embedding_dim']}], {', '.join(meta['platforms'])}) of {meta['checkpoint']} step {meta['step']} "
          f"to {out_dir}", flush=True)
    return meta


__all__ = ["PLATFORMS", "check_out_dir", "export_embedder", "run_export"]
