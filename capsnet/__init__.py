"""capsnet: Capsule Networks with dynamic routing, trained with torchnet."""
from .loss import CapsuleLoss, margin_loss, reconstruction_loss
from .model import CapsNet, CapsNetOutput, dynamic_routing, squash

__all__ = ["CapsNet", "CapsNetOutput", "CapsuleLoss", "dynamic_routing", "margin_loss",
           "reconstruction_loss", "squash"]
