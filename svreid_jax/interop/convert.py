"""Convert a weight file to .npz or .safetensors once, so machines without torch can load it.

  python -m svreid_jax.interop.convert --in=resnet50-0676ba61.pth --out=resnet50.npz
  python -m svreid_jax.interop.convert --in=model.safetensors --out=resnet50.npz

--in: a PyTorch .pth/.pt (a state_dict, or a dict with 'state_dict'; needs torch), a .safetensors or
an .npz; --out: .npz, or .safetensors (numpy tensors, no torch needed to read either).
"""
import numpy as np
import safetensors.numpy
from absl import app, flags

from svreid_jax.interop.torchvision import read_state_dict

flags.DEFINE_string("in", None, "Weight file to read: .pth/.pt (needs torch), .safetensors or .npz.")
flags.DEFINE_string("out", None, "Output path: .npz or .safetensors.")
FLAGS = flags.FLAGS


def convert(source: str, out: str) -> int:
    """Write the tensors of `source` to `out` (format from its extension); returns how many."""
    if not out.endswith((".npz", ".safetensors")):
        raise app.UsageError(f"--out={out}: expected a .npz or .safetensors path")
    state = read_state_dict(source)
    if out.endswith(".safetensors"):
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, out)
    else:
        np.savez(out, **state)
    return len(state)


def main(argv):
    del argv
    count = convert(getattr(FLAGS, "in"), FLAGS.out)
    print(f"wrote {count} arrays to {FLAGS.out}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["in", "out"])
    app.run(main)
