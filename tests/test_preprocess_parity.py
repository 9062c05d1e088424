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


def write_users_images(root) -> None:
    """Real MNIST digits and CIFAR-10 images as users keep them: odd sizes, RGB, palette, alpha, JPEG."""
    from PIL import Image

    from convzoo.data import formats

    digits = formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[:6, 0]
    photos, _ = formats.read_cifar_batch(need(CIFAR_DIR) / "cifar-10-batches-bin" / "test_batch.bin")
    (root / "digit").mkdir(parents=True)
    (root / "photo").mkdir()
    sizes = [(40, 37), (19, 23), (28, 28), (100, 90), (33, 31), (64, 64)]
    for i, (digit, photo, size) in enumerate(zip(digits, photos[:6].transpose(0, 2, 3, 1), sizes)):
        d, p = Image.fromarray(digit).resize(size, Image.Resampling.BICUBIC), Image.fromarray(photo)
        p = p.resize(size, Image.Resampling.BICUBIC)
        d = (d, d.convert("RGB"), d.convert("P"), d.convert("LA"), d, d)[i]
        p = (p, p.convert("RGBA"), p.convert("P"), p, p.convert("L"), p)[i]
        d.save(root / "digit" / f"{i}.png")
        p.save(root / "photo" / f"{i}.{'jpg' if i == 5 else 'png'}", **({"quality": 90} if i == 5 else {}))


@pytest.mark.real_data
@pytest.mark.parametrize("model, image_size, channels", [
    ("lenet5", 28, 1), ("lenet5", 32, 3), ("lenet5-keras", 32, 1), ("alexnet-cifar", 32, 3), ("alexnet", 32, 3),
    ("lenet5", 48, 1)])
def test_torch_and_numpy_preprocessing_agree_on_users_images(tmp_path, model, image_size, channels):
    """An image folder (data/formats: decode -> uint8 tensors -> tensors.to_model_input) and a user's
    file at predict time (deploy/preprocess.to_array on the same file) give the model the same input."""
    import torch

    from convzoo.data import formats
    from convzoo.data.catalog import FolderRule
    from convzoo.data.tensors import InputSpec, load_dataset, to_model_input
    from convzoo.deploy.preprocess import load_image, to_array
    from convzoo.models.registry import MODELS

    write_users_images(tmp_path / "users")
    rule = FolderRule(image_size=image_size, channels=channels, test_split=0.5)
    train, test, located = load_dataset("folder", tmp_path / "users", folder=rule)
    info = MODELS[model]
    spec = InputSpec(channels, info.input_size, info.fit, located.spec.mean, located.spec.std)
    meta = {"input": spec.to_dict(), "dataset": "folder", "preprocess": "resize", "data": rule.to_dict()}
    _, files = formats.list_folder(tmp_path / "users", rule)
    for split, name in ((train, "train"), (test, "test")):
        torch_side = to_model_input(split.images, spec).numpy()
        numpy_side = np.concatenate([to_array(load_image(path), meta) for path, _ in files[name]])
        assert torch_side.shape == numpy_side.shape == (len(split), channels, info.input_size, info.input_size)
        assert np.abs(torch_side - numpy_side).max() <= 1e-4
    assert len(train) + len(test) == 12 and train.images.dtype == torch.uint8
