"""Weight import: torchvision ResNets (.safetensors, .npz or .pth; ImageNet weights from the Hugging Face hub
by depth, interop/hub.py) and the authors' checkpoints into the Linen models."""
from svreid_jax.interop.torchvision import (  # noqa: F401
    check_resnet_state_dict,
    convert_torchvision_resnet,
    load_backbone_weights,
    read_state_dict,
)
