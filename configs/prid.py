"""SVReID → PRID2011 with the paper's hyper-parameters (docs/METHOD.md §6.1).

Set the roots: --config.data.source.root=/data/svreid --config.data.target.root=/data/prid
"""
from configs import targets


def get_config(arg=None):
    return targets.target_config("prid", arg)
