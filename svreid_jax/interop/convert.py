"""Convert a weight file to .npz or .safetensors once, so machines without torch can load it.

  python -m svreid_jax.interop.convert --in=resnet50-0676ba61.pth --out=resnet50.npz
  python -m svreid_jax.interop.convert --in=model.safetensors --out=resnet50.npz

--in: a PyTorch .pth/.pt (a state_dict, or a dict with 'state_dict'; needs torch), a .safetensors or
an .npz; --out: .npz, or .safetensors (numpy tensors, no torch needed to read either), replaced whole
(an earlier file at --out stays as it was if the write fails). Exit 0 done, 1 an unreadable --in or a
failed write (one line), 2 a usage error.
"""
import io
import sys
from collections.abc import Sequence

import numpy as np
import safetensors.numpy
from absl import app, flags

from svreid_jax.interop.torchvision import read_state_dict
from svreid_jax.utils import atomic

USAGE = "python -m svreid_jax.interop.convert --in=FILE --out=FILE.npz|FILE.safetensors"


def convert(source: str, out: str) -> int:
    """Write the tensors of `source` to `out` (format from its extension); returns how many."""
    if not out.endswith((".npz", ".safetensors")):
        raise app.UsageError(f"--out={out}: expected a .npz or .safetensors path")
    state = read_state_dict(source)
    if out.endswith(".safetensors"):
        data = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in state.items()})
    else:
        buffer = io.BytesIO()
        np.savez(buffer, **state)
        data = buffer.getvalue()
    # Whole or not at all (utils/atomic.py): a full disk leaves an earlier --out file as it was.
    atomic.write_bytes(out, data)
    return len(state)


def main(argv: Sequence[str]) -> int:
    """Command line entry point; argv[0] is the program name. Returns the exit code."""
    # Flags of its own, not absl's global ones: importing this module next to svreid_jax.main (whose
    # --out names the export folder) must not define a flag twice.
    fv = flags.FlagValues()
    flags.DEFINE_string("in", None, "Weight file to read: .pth/.pt (needs torch), .safetensors or .npz.",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "Output path: .npz or .safetensors.", flag_values=fv)
    try:
        fv(list(argv))
    except flags.Error as e:
        print(f"error: {e}\nusage: {USAGE}", file=sys.stderr)
        return 2
    source, out = getattr(fv, "in"), fv.out
    if source is None or out is None:
        print(f"error: --in and --out must be given\nusage: {USAGE}", file=sys.stderr)
        return 2
    try:
        count = convert(source, out)
    except app.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ImportError, ValueError) as e:  # a missing or unreadable --in, no torch, a full disk
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(f"wrote {count} arrays to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
