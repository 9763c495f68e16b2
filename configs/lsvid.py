"""SVReID → LS-VID with the paper's hyper-parameters (docs/METHOD.md §6.1).

Set the roots: --config.data.source.root=/data/svreid --config.data.target.root=/data/lsvid
"""
from configs import targets


def get_config(arg=None):
    return targets.target_config("lsvid", arg)
