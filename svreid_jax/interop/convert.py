"""Convert a PyTorch weight file to .npz once, so machines without torch can load it.

  python -m svreid_jax.interop.convert --in=resnet50-0676ba61.pth --out=resnet50.npz
"""
import numpy as np
from absl import app, flags

from svreid_jax.interop.torchvision import read_state_dict

flags.DEFINE_string("in", None, "PyTorch .pth/.pt file (a state_dict, or a dict with 'state_dict').")
flags.DEFINE_string("out", None, "Output .npz path.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    state = read_state_dict(getattr(FLAGS, "in"))
    np.savez(FLAGS.out, **state)
    print(f"wrote {len(state)} arrays to {FLAGS.out}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["in", "out"])
    app.run(main)
