"""`svreid_tracklets`: any registered dataset, one array_record record per tracklet."""
from svreid_jax.data.tfds_builders.svreid_tracklets.svreid_tracklets_dataset_builder import (  # noqa: F401
    FORMAT_VERSION,
    SPLITS,
    Builder,
    config_name,
    frame_format,
)
