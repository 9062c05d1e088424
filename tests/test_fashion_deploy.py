"""Fashion-MNIST models through export, predict and serve (the 'fashion' preprocessing: the item
fitted in 28x28, no digit-style centring), with the shipped weights; a bad file in a batch of good
ones stops predict before any prediction."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import FASHION_DIR, assert_user_error, need, run_cli


@pytest.fixture(scope="module")
def fashion_shots(tmp_path_factory):
    """300 real Fashion-MNIST test images as PNG files, as dark items on white like a product photo."""
    from convzoo.data import formats

    images = formats.read_idx_images(need(FASHION_DIR) / "t10k-images-idx3-ubyte.gz")[:300, 0]
    labels = formats.read_idx_labels(FASHION_DIR / "t10k-labels-idx1-ubyte.gz", 10)[:300]
    folder = tmp_path_factory.mktemp("fashion")
    for i, image in enumerate(images):
        Image.fromarray(255 - image).resize((112, 112)).save(folder / f"{i:03d}.png")
    return folder, labels


@pytest.mark.real_data
def test_fashion_export_predict_and_serve(fashion_shots, tmp_path):
    from convzoo.data.catalog import get_spec
    from test_deploy import serving

    folder, labels = fashion_shots
    result = json.loads(run_cli("export", "--ckpt", "lenet5:fashion-mnist", "--json", cwd=tmp_path, check=0).stdout)
    model = tmp_path / result["path"]
    assert result["max_abs_diff"] <= 1e-4
    lines = run_cli("predict", "--model", model, folder, "--json", check=0).stdout.splitlines()
    predicted = [json.loads(line)["class"] for line in lines]
    classes = get_spec("fashion-mnist").classes
    accuracy = sum(p == classes[t] for p, t in zip(predicted, labels)) / len(labels)
    assert len(predicted) == 300 and accuracy >= 0.80, accuracy  # photos: inverted, upscaled 4x
    with serving(model, log=tmp_path / "serve.log") as (url, _):
        import httpx

        answer = httpx.post(url + "/v1/predict", files={"file": ("0.png", (folder / "000.png").read_bytes())},
                            timeout=60).json()
        assert answer["class"] == predicted[0]


@pytest.mark.real_data
def test_one_bad_file_among_good_ones_stops_before_any_prediction(fashion_shots, tmp_path):
    folder, _ = fashion_shots
    broken = tmp_path / "broken.png"
    broken.write_bytes((folder / "000.png").read_bytes()[:100])
    proc = run_cli("predict", "--model", "lenet5:fashion-mnist", folder, broken)
    assert_user_error(proc, "broken.png", "corrupt or truncated")
    assert proc.stdout == ""


@pytest.mark.real_data
def test_a_cut_out_garment_reads_as_on_white():
    """A garment cut out of its product photo (transparent around it) is the product photo: the same class
    as on white, light garments too (a background contrasting with the item read 5 of 20 as their negative)."""
    import numpy as np

    from convzoo.data import formats
    from convzoo.deploy.predict import Predictor
    from convzoo.models.pretrained import pretrained_path

    images = formats.read_idx_images(need(FASHION_DIR) / "t10k-images-idx3-ubyte.gz")[:40, 0]
    labels = formats.read_idx_labels(FASHION_DIR / "t10k-labels-idx1-ubyte.gz", 10)[:40]
    cut_outs, on_white = [], []
    for image in images:
        big = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BICUBIC))
        item = big > 10
        rgba = np.zeros((224, 224, 4), np.uint8)
        rgba[..., :3], rgba[..., 3] = (255 - big)[..., None], item * 255
        cut_outs.append(Image.fromarray(rgba, "RGBA"))
        on_white.append(Image.fromarray(np.where(item, 255 - big, 255).astype(np.uint8)))
    predictor = Predictor(pretrained_path("lenet5:fashion-mnist"))
    cut = [r["index"] for r in predictor.predict_images(cut_outs, topk=1)]
    white = [r["index"] for r in predictor.predict_images(on_white, topk=1)]
    assert cut == white
    assert np.mean(np.array(cut) == np.asarray(labels)) >= 0.8


def test_a_light_garment_cut_out_reads_by_its_silhouette():
    """A white or cream T-shirt cut out on a transparent canvas (a shop's product PNG) was 'blank image:
    nothing to read' and a guess (Bag): on white, only the transparency held its shape. The same shirt
    shaded by folds (225-255) too; with a small dark print, the print was read (Bag); white trousers with
    faint folds, the folds (Dress). A canvas with nothing on it stays blank."""
    import numpy as np
    from PIL import ImageDraw

    from convzoo.deploy.predict import Predictor
    from convzoo.models.pretrained import pretrained_path

    shirt = [(150, 80), (350, 80), (450, 180), (390, 230), (350, 190), (350, 450), (150, 450), (150, 190),
             (110, 230), (50, 180)]
    images = []
    for colour in ((255, 255, 255, 255), (245, 240, 230, 255), (40, 40, 40, 255)):
        image = Image.new("RGBA", (500, 500), (0, 0, 0, 0))
        ImageDraw.Draw(image).polygon(shirt, fill=colour)
        images.append(image)
    folds = np.asarray(images[0]).copy()
    folds[..., :3] = np.minimum(folds[..., :3], (225 + 30 * np.abs(np.sin(np.arange(500) / 40)))[:, None, None])
    logo = images[0].copy()  # a small dark print on a white shirt: only the print showed on white (Bag, 0.92)
    ImageDraw.Draw(logo).rectangle((220, 150, 260, 180), fill=(20, 20, 20, 255))
    trousers = Image.new("RGBA", (500, 500), (0, 0, 0, 0))
    ImageDraw.Draw(trousers).polygon([(140, 60), (360, 60), (380, 460), (280, 460), (250, 200), (220, 460), (120, 460)],
                                     fill=(255, 255, 255, 255))
    for y in range(100, 450, 40):  # faint folds: read as the garment (Dress)
        ImageDraw.Draw(trousers).line((150, y, 350, y + 10), fill=(238, 238, 238, 255), width=3)
    images += [Image.fromarray(folds, "RGBA"), logo, trousers, Image.new("RGBA", (500, 500), (0, 0, 0, 0))]
    got = Predictor(pretrained_path("lenet5:fashion-mnist")).predict_images(images, topk=1)
    assert [(r["class"], r.get("blank", False)) for r in got[:6]] == [("T-shirt/top", False)] * 5 + [("Trouser", False)], got
    assert got[6]["blank"], got


@pytest.mark.real_data
def test_a_folder_of_garment_photos_names_t_shirt_top_as_a_folder_can(tmp_path, capsys):
    """No folder can be named 'T-shirt/top': Fashion's class 0 could never be scored from a folder, and a
    refused folder was named as the model's file. T-shirt-top/ (as `data sample` writes it) is that class;
    a near miss in case is refused naming the folder, with the class it may mean."""
    import convzoo
    from convzoo.cli import main
    from convzoo.data import formats

    images = formats.read_idx_images(need(FASHION_DIR) / "t10k-images-idx3-ubyte.gz")[:100, 0]
    labels = formats.read_idx_labels(FASHION_DIR / "t10k-labels-idx1-ubyte.gz", 10)[:100]
    for name, label in (("T-shirt-top", 0), ("trouser", 1)):
        (tmp_path / name).mkdir()
        for i in [int(i) for i in (labels == label).nonzero()[0][:4]]:
            Image.fromarray(images[i]).save(tmp_path / name / f"{i}.png")
    assert main(["eval", "--model", "lenet5:fashion-mnist", "--dataset", "folder", "--data-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convzoo: error: {tmp_path}: the data set's classes 'trouser' (did you mean 'Trouser'?)"), err
    (tmp_path / "trouser").rename(tmp_path / "Trouser")
    result = convzoo.evaluate("lenet5:fashion-mnist", dataset="folder", data_path=tmp_path)
    assert result.confusion.sum(1).tolist()[:2] == [4, 4] and result.accuracy >= 0.75, result.confusion


@pytest.mark.real_data
@pytest.mark.parametrize("model, folder", [("lenet5:mnist", "mnist"), ("lenet5:fashion-mnist", "fashion")])
def test_a_data_set_image_saved_as_png_reads_as_from_test(model, folder, tmp_path):
    """A test image saved as it is (`convzoo data sample`) is already in the recipe's format: it gets
    exactly --from-test's probabilities. Re-made, Fashion's lost faint edges and moved a pixel (29 of
    1,000 changed class); MNIST's probabilities moved by over 1e-3 in 49 of 300."""
    import numpy as np

    from conftest import MNIST_DIR
    from convzoo.deploy.predict import Predictor, predict_test_set
    from convzoo.models.pretrained import pretrained_path

    folder = need(MNIST_DIR if folder == "mnist" else FASHION_DIR)
    predictor = Predictor(pretrained_path(model))
    images, _, expected = predict_test_set(predictor, 300, data_path=folder, topk=3)
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image.reshape(28, 28)).save(files[-1])
    got = predictor.predict_files([str(f) for f in files], topk=3)
    same = [g["class"] == e["class"] and np.allclose([t["probability"] for t in g["topk"]],
                                                     [t["probability"] for t in e["topk"]], atol=1e-6)
            for g, e in zip(got, expected)]
    # 9,997 of MNIST's 10,000 test images are in the format (the first 300 all), 9,962 of Fashion's (a few touch an edge or are
    # centred off by one): those are re-made, as a user's image is.
    assert sum(same) >= (300 if "digit" in str(predictor.meta.get("preprocess")) else 297), sum(same)
