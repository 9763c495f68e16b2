"""SVReID → CCVID (source SVReID-cc) with the paper's hyper-parameters (docs/METHOD.md §6.1).

Set the roots: --config.data.source.root=/data/svreid --config.data.target.root=/data/ccvid
"""
from configs import targets


def get_config(arg=None):
    return targets.target_config("ccvid", arg)
