"""The two preprocessings agree: torch's (training and `eval --ckpt`, data/tensors.py) and numpy's
(predict, serve and `eval --model`, deploy/preprocess.py, kept torch-free for serving), on real
MNIST and CIFAR-10 images and for every way a model fits them (pad, resize, none)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import CIFAR_DIR, MNIST_DIR, need


def both(images: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from convzoo.data.tensors import to_model_input
    from convzoo.deploy.preprocess import from_dataset

    torch_side = to_model_input(torch.from_numpy(images), spec).numpy()
    numpy_side = from_dataset(images, {"input": spec.to_dict()})
    return torch_side, numpy_side


@pytest.mark.real_data
@pytest.mark.parametrize("model", ["lenet5", "lenet5-keras", "alexnet-cifar", "alexnet"])
def test_torch_and_numpy_preprocessing_agree_on_real_images(model):
    from convzoo.data import formats
    from convzoo.data.catalog import get_spec
    from convzoo.data.tensors import InputSpec
    from convzoo.models.registry import MODELS

    info = MODELS[model]
    if info.in_channels == 1:
        images = formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[:64]
        data = get_spec("mnist")
    else:
        images, _ = formats.read_cifar_batch(need(CIFAR_DIR) / "cifar-10-batches-bin" / "test_batch.bin")
        images, data = images[:16], get_spec("cifar10")
    spec = InputSpec(info.in_channels, info.input_size, info.fit, data.mean, data.std)
    torch_side, numpy_side = both(np.ascontiguousarray(images), spec)
    assert torch_side.shape == numpy_side.shape == (len(images), info.in_channels, info.input_size, info.input_size)
    # Measured: 0 for pad and none; 7e-6 (0.0004 grey levels) for AlexNet's 32 -> 227 bilinear resize.
    assert np.abs(torch_side - numpy_side).max() <= 1e-4
