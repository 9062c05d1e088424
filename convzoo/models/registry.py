"""Model registry: name -> constructor and the input it expects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import unknown
from . import alexnet, lenet


@dataclass(frozen=True)
class ModelInfo:
    name: str
    build: Callable[..., nn.Module]
    input_size: int  # square input side the network is built for
    fit: str  # how dataset images reach input_size: pad | resize | none
    default_threads: int  # CPU threads that train it fastest on a shared 2-core machine
    description: str
    in_channels: int = 1  # of the data set it was made for (a checkpoint records the real one)


MODELS: dict[str, ModelInfo] = {}


def register(info: ModelInfo) -> None:
    MODELS[info.name] = info


register(ModelInfo("lenet5", lenet.LeNet5, 32, "pad", 1, "MindSpore model-zoo LeNet5 (ReLU, max-pool, 32x32)"))
register(ModelInfo("lenet5-keras", lenet.LeNet5Keras, 28, "resize", 1, "the Keras tutorial's LeNet-5 variant (28x28)"))
register(ModelInfo("lenet-quant", lenet.LeNetQuant, 32, "pad", 1, "MindSpore LeNet-Quant fused net (conv-BN-ReLU)"))
register(ModelInfo("lenet5-1998", lenet.LeNet5Paper, 32, "pad", 1, "LeCun et al. 1998: tanh, trainable subsampling, C3 table, RBF"))

register(ModelInfo("alexnet", alexnet.AlexNet, 227, "resize", 2, "MindSpore model-zoo AlexNet (227x227, 58.3M params)", 3))
register(ModelInfo("alexnet-cifar", alexnet.AlexNetCifar, 32, "none", 2, "AlexNet's shape for 32x32 with BatchNorm", 3))


def get_model_info(name: str) -> ModelInfo:
    if name not in MODELS:
        raise unknown("model", name, MODELS)
    return MODELS[name]


def create_model(name: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return get_model_info(name).build(num_classes=num_classes, in_channels=in_channels)
