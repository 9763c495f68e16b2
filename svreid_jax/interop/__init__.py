"""Weight import: torchvision ResNets (.pth or .npz) into the Linen models."""
from svreid_jax.interop.torchvision import (  # noqa: F401
    convert_torchvision_resnet,
    load_backbone_weights,
    read_state_dict,
)
