"""Stage 2: HexaNet, one Mini-ResNet branch per region, fused into P(abnormal)."""

from neurosono.classify.model import HexaNet, MiniResNet

__all__ = ["HexaNet", "MiniResNet"]
