"""Model registry: name -> constructor and the input it expects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import unknown
from . import airbench, alexnet, lenet


@dataclass(frozen=True)
class ModelInfo:
    """Everything convzoo knows about a model, declared once, here."""

    name: str
    build: Callable[..., nn.Module]  # build(num_classes=..., in_channels=...)
    input_size: int  # square input side the network is built for
    fit: str  # how data set images reach input_size: pad | resize | none
    description: str
    in_channels: int = 1  # of the data set it was made for (a checkpoint records the real one)
    default_threads: int = 1  # CPU threads that train it fastest on a shared 2-core machine
    quantizable: bool = False  # has an int8 recipe (QAT/PTQ through torch.export and onnxruntime)
    params: int = 0  # with 10 classes: the registry test checks the built model against these two
    macs: int = 0  # multiply-accumulates per image


MODELS: dict[str, ModelInfo] = {}


def register(info: ModelInfo) -> None:
    MODELS[info.name] = info


register(ModelInfo(name="lenet5", build=lenet.LeNet5, input_size=32, fit="pad", quantizable=True,
                   description="MindSpore model-zoo LeNet5 (ReLU, max-pool, 32x32)", params=61_706, macs=416_520))
register(ModelInfo(name="lenet5-keras", build=lenet.LeNet5Keras, input_size=28, fit="resize", quantizable=True,
                   description="the Keras tutorial's LeNet-5 variant (28x28)", params=331_214, macs=1_530_800))
register(ModelInfo(name="lenet-quant", build=lenet.LeNetQuant, input_size=32, fit="pad", quantizable=True,
                   description="MindSpore LeNet-Quant fused net (conv-BN-ReLU)", params=61_728, macs=416_520))
register(ModelInfo(name="lenet5-1998", build=lenet.LeNet5Paper, input_size=32, fit="pad", quantizable=True,
                   description="LeCun et al. 1998: tanh, trainable subsampling, C3 table, RBF",
                   params=60_840, macs=326_520))
register(ModelInfo(name="alexnet", build=alexnet.AlexNet, input_size=227, fit="resize", in_channels=3,
                   default_threads=2, description="MindSpore model-zoo AlexNet (227x227, 58.3M params)",
                   params=58_322_314, macs=1_131_201_056))
register(ModelInfo(name="alexnet-cifar", build=alexnet.AlexNetCifar, input_size=32, fit="none", in_channels=3,
                   default_threads=2, quantizable=True, description="AlexNet's shape for 32x32 with BatchNorm",
                   params=6_977_994, macs=171_643_904))
register(ModelInfo(name="airbench", build=airbench.AirbenchNet, input_size=32, fit="none", in_channels=3,
                   default_threads=2, quantizable=True,
                   description="airbench94-style CIFAR net for time to accuracy (whitening conv, BN/GELU, 2M params)",
                   params=1_972_792, macs=118_147_360))


def get_model_info(name: str) -> ModelInfo:
    if name not in MODELS:
        raise unknown("model", name, MODELS)
    return MODELS[name]


def create_model(name: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return get_model_info(name).build(num_classes=num_classes, in_channels=in_channels)


def norm_biases(model: nn.Module) -> list[nn.Parameter]:
    """The biases of a model's BatchNorm layers: the parameter group --bias-lr-scale scales."""
    return [m.bias for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None]


def has_norm_biases(name: str) -> bool:
    """Whether model `name` has BatchNorm biases, from a copy of it built to look (on the CPU: the meta
    device cannot build lenet5-1998, whose C3 table is read at construction)."""
    return bool(norm_biases(create_model(name)))
