"""SVReID → MARS with the paper's hyper-parameters (docs/METHOD.md §6.1).

Set the roots: --config.data.source.root=/data/svreid --config.data.target.root=/data/mars
Variants: configs/mars.py (paper, default: the paper as published), configs/mars.py:reference (the authors'
code, docs/REPRODUCIBILITY.md), configs/mars.py:plus (ours, beyond the paper: our camera term, target BN and
clip pairs, then target pseudo-identities in a memory of camera-aware proxies, docs/METHOD.md §1.4).
"""
from configs import targets


def get_config(arg=None):
    return targets.target_config("mars", arg)
