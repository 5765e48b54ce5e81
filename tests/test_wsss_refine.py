"""refine-cams: PAR and the affinity random walk against dense float64 numpy references, a toy
edge that only the affinities can find, the pair labels of AffinityNet, and the stage through
the CLI (resume, refusals, eval-cams and pseudo-labels reading its output)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gainet.cli import main
from gainet.training.config import TrainConfig
from gainet.training.trainer import train
from gainet.wsss import data as io
from gainet.wsss.affinity import (
    affinity_loss, background_scores, disc_offsets, feature_affinity, pair_labels, par_offsets, par_refine,
    random_walk, shifted,
)
from gainet.wsss.refine import RefineParams, refine_cams


# ----------------------------------------------------------------------------- dense references
def dense_random_walk(maps: np.ndarray, features: np.ndarray, radius: int, beta: float, steps: int) -> np.ndarray:
    """float64: T = row-normalised A^beta over the disc (self included), v <- T v, as matrices."""
    d, h, w = features.shape
    pos = np.array([(i, j) for i in range(h) for j in range(w)])
    f = features.reshape(d, -1).T.astype(np.float64)
    dist2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    a = np.exp(-np.abs(f[:, None, :] - f[None, :, :]).mean(-1)) * (dist2 < radius * radius)
    t = a ** beta
    t /= t.sum(1, keepdims=True)
    v = maps.reshape(maps.shape[0], -1).T.astype(np.float64)
    return (np.linalg.matrix_power(t, steps) @ v).T.reshape(maps.shape)


def dense_par(image: np.ndarray, maps: np.ndarray, dilations, steps: int, w_rgb: float, w_pos: float) -> np.ndarray:
    """float64 PAR written per pixel from the definition (docstring of par_weights), as a matrix."""
    _, h, w = image.shape
    offsets = []
    for d in dilations:
        for dy in (-d, 0, d):
            for dx in (-d, 0, d):
                if (dy, dx) != (0, 0) and (dy, dx) not in offsets:
                    offsets.append((dy, dx))
    dist = np.array([math.hypot(*o) for o in offsets])
    s_pos = dist.std(ddof=1)
    m = np.zeros((h * w, h * w))
    img = image.astype(np.float64)
    for i in range(h):
        for j in range(w):
            nb = [(i + dy, j + dx, k) for k, (dy, dx) in enumerate(offsets) if 0 <= i + dy < h and 0 <= j + dx < w]
            colours = np.stack([img[:, y, x] for y, x, _ in nb])             # (n, 3)
            s = colours.std(0) + 1e-8
            k_rgb = -((np.abs(img[:, i, j] - colours) / (w_rgb * s)) ** 2).mean(1)
            k_pos = -(dist[[k for _, _, k in nb]] / (w_rgb * (s_pos + 1e-8))) ** 2
            soft = lambda z: np.exp(z - z.max()) / np.exp(z - z.max()).sum()  # noqa: E731
            weight = (soft(k_rgb) + w_pos * soft(k_pos)) / (1 + w_pos)
            for (y, x, _), wt in zip(nb, weight):
                m[i * w + j, y * w + x] += wt
    v = maps.reshape(maps.shape[0], -1).T.astype(np.float64)
    return (np.linalg.matrix_power(m, steps) @ v).T.reshape(maps.shape)


def test_random_walk_equals_the_dense_matrix_power() -> None:
    """Two images in one batch, each against its own dense float64 walk (the batch must not mix)."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)
    maps = rng.uniform(size=(2, 2, 5, 6)).astype(np.float32)
    got = random_walk(torch.from_numpy(maps), torch.from_numpy(features), radius=3, beta=2.0, iterations=4).numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], dense_random_walk(maps[b], features[b], 3, 2.0, 4), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="features"):
        feature_affinity(torch.zeros(3, 5, 6), disc_offsets(2))


def test_background_walk_scores_are_the_argmax_of_the_dense_float64_walk() -> None:
    """AffinityNet's decision: the walked background beside the walked maps, argmax. The scores
    f_k / (f_k + b) equal the dense walk's ratios, and > 0.5 with the strongest map winning picks
    the same label as the argmax over background and classes."""
    rng = np.random.default_rng(3)
    features = rng.normal(size=(3, 6, 7)).astype(np.float32)
    maps = rng.uniform(size=(2, 6, 7)).astype(np.float32)
    maps[:, :, :3] *= 0.1  # a background-like left part
    background = (1 - maps.max(0, keepdims=True)) ** 2.0
    stacked = torch.from_numpy(np.concatenate([background, maps]))[None]
    walked = random_walk(stacked, torch.from_numpy(features)[None], radius=3, beta=2.0, iterations=4)[0]
    got = background_scores(walked[None, 1:], walked[None, :1])[0].numpy()
    dense = dense_random_walk(np.concatenate([background, maps]).astype(np.float64), features, 3, 2.0, 4)
    np.testing.assert_allclose(got, dense[1:] / (dense[1:] + dense[:1]), rtol=1e-4, atol=1e-6)
    label = np.where(got.max(0) > 0.5, 1 + got.argmax(0), 0)
    assert (label == dense.argmax(0)).all() and 0 < (label == 0).sum() < label.size
    assert background_scores(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).abs().sum() == 0


def test_par_equals_a_per_pixel_float64_reference() -> None:
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(3, 7, 8)).astype(np.float32)
    maps = rng.uniform(size=(2, 7, 8)).astype(np.float32)
    got = par_refine(torch.from_numpy(image)[None], torch.from_numpy(maps)[None], dilations=(1, 2), iterations=3,
                     w_rgb=0.3, w_pos=0.5)[0].numpy()
    np.testing.assert_allclose(got, dense_par(image, maps, (1, 2), 3, 0.3, 0.5), rtol=1e-5, atol=1e-6)


def test_shifted_reads_the_neighbour_and_marks_the_border() -> None:
    x = torch.arange(12.0).view(1, 1, 3, 4)
    out, valid = shifted(x, [(0, 1), (-1, 0)])
    assert out[0, 0, 0, 1, 2] == x[0, 0, 1, 3] and out[0, 0, 1, 1, 2] == x[0, 0, 0, 2]
    assert not valid[0, :, 3].any() and valid[0, :, :3].all() and not valid[1, 0].any()


# ----------------------------------------------------------------------------- the edge test
def two_regions(width: int = 64, edge: int = 24, seed_edge: int = 19, flat: bool = False):
    """A (1, 3, 24, width) image, left of ``edge`` one colour, right another (plus noise), and a
    blurred seed map (1, 1, 24, width) whose 0.5 crossing lies at ``seed_edge``, inside the left
    region: the object is the left region, the seed under-covers it by ``edge - seed_edge`` px."""
    g = torch.Generator().manual_seed(0)
    image = torch.empty(1, 3, 24, width)
    image[..., :edge] = torch.tensor([0.2, 0.4, 0.8]).view(1, 3, 1, 1)
    image[..., edge:] = torch.tensor([0.9, 0.5, 0.1]).view(1, 3, 1, 1)
    if flat:
        image[:] = 0.5
    image = image + 0.01 * torch.randn(image.shape, generator=g)
    x = torch.arange(width, dtype=torch.float32)
    seed = torch.sigmoid((seed_edge - 0.5 - x) / 2.0).view(1, 1, 1, width).expand(1, 1, 24, width).contiguous()
    return image, seed


def crossing(maps: torch.Tensor) -> float:
    """Mean column where the normalised map first drops to <= 0.5 (the segment's right edge)."""
    m = maps[0, 0]
    m = (m - m.min()) / (m.max() - m.min())
    return float((m > 0.5).float().sum(1).mean())


def test_par_moves_a_blurred_seed_to_the_colour_edge_and_needs_the_colours() -> None:
    image, seed = two_regions()
    assert abs(crossing(seed) - 19) < 0.5
    assert abs(crossing(par_refine(image, seed)) - 24) <= 1.0
    flat, _ = two_regions(flat=True)  # same seed, no colour edge: the edge must not move there
    assert abs(crossing(par_refine(flat, seed)) - 24) >= 3.0


def test_random_walk_moves_the_seed_to_the_feature_edge_and_needs_the_affinities() -> None:
    image, seed = two_regions()
    features = 20 * image  # affinities ~1 inside a region, ~exp(-10) across the edge
    assert abs(crossing(random_walk(seed, features, radius=5, beta=8.0, iterations=16)) - 24) <= 1.0
    flat = torch.zeros_like(features)  # every affinity 1: plain diffusion
    assert abs(crossing(random_walk(seed, flat, radius=5, beta=8.0, iterations=16)) - 24) >= 3.0


# ----------------------------------------------------------------------------- affinity training
def test_pair_labels_match_a_numpy_count() -> None:
    rng = np.random.default_rng(2)
    labels = rng.choice([0, 1, 2, 255], size=(2, 6, 7))
    offsets = disc_offsets(3, half=True)
    bg, fg, neg = pair_labels(torch.from_numpy(labels), offsets)
    counts = np.zeros(3, np.int64)
    for b in range(2):
        for i in range(6):
            for j in range(7):
                for dy, dx in offsets:
                    y, x = i + dy, j + dx
                    if not (0 <= y < 6 and 0 <= x < 7):
                        continue
                    p, q = labels[b, i, j], labels[b, y, x]
                    if 255 in (p, q):
                        continue
                    counts[0 if p == q == 0 else 1 if p == q else 2] += 1
    assert [int(bg.sum()), int(fg.sum()), int(neg.sum())] == counts.tolist()
    assert len(offsets) == len(disc_offsets(3)) // 2 and (0, 0) not in offsets and (0, 0) in disc_offsets(3, centre=True)


def test_affinity_loss_is_low_for_the_right_affinities_and_trains_features_apart() -> None:
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, :, 4:] = 1
    offsets = disc_offsets(3, half=True)
    masks = pair_labels(labels, offsets)
    features = torch.zeros(1, 4, 8, 8, requires_grad=True)
    optimizer = torch.optim.Adam([features], lr=0.1)
    start = None
    for _ in range(60):
        affinity, _ = feature_affinity(features + 0.01 * torch.arange(64.0).view(1, 1, 8, 8), offsets)
        loss = affinity_loss(affinity, *masks)
        start = float(loss.detach()) if start is None else start
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * start
    affinity, _ = feature_affinity(features.detach(), [(0, 1)])
    assert affinity[0, 0, :, 3].max() < 0.2 and affinity[0, 0, :, :3].min() > 0.8  # across vs inside


def test_offsets_and_params_reject_bad_input() -> None:
    assert len(par_offsets((1, 2))) == 16 and len(par_offsets((1, 1))) == 8
    with pytest.raises(ValueError, match="dilations"):
        par_offsets((0,))
    with pytest.raises(ValueError, match="radius"):
        disc_offsets(1)
    with pytest.raises(ValueError, match="method"):
        RefineParams(method="crf")
    with pytest.raises(ValueError, match="conf_fg"):
        RefineParams(method="affinity", conf_fg=1.5)
    with pytest.raises(ValueError, match="background_power"):
        RefineParams(method="affinity", background_power=-1)
    with pytest.raises(ValueError, match="affinity"):
        RefineParams(method="par", background_power=4)


# ----------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refine")
    config = TrainConfig(dataset="parts", train_images=16, val_images=8, batch_size=8, image_size=32,
                         model="small-cnn", model_width=8, epochs=1, warmup_epochs=0, method="cam", progress=False,
                         tensorboard=False, threads=1, output_dir=str(root / "cls"))
    train(config)
    assert main(["make-cams", "--checkpoint", str(root / "cls" / "last.pt"), "--output", str(root / "cams"),
                 "--attention-layer", "stride4", "--device", "cpu", "--no-progress"]) == 0
    assert main(["eval-cams", "--cams", str(root / "cams"), "--no-progress"]) == 0
    return root


def test_refine_cams_par_and_affinity_through_the_cli(seeds: Path, capsys) -> None:
    cams = seeds / "cams"
    for method in ("par", "affinity"):
        out = seeds / f"refined-{method}"
        extra = ["--epochs", "2", "--iterations", "8", "--no-label-crf"] if method == "affinity" else []
        assert main(["refine-cams", "--cams", str(cams), "--output", str(out), "--method", method, *extra,
                     "--no-progress"]) == 0
        assert "16 written" in capsys.readouterr().out
        files = sorted((out / "cams").glob("*.npy"))
        assert len(files) == 16
        keys, maps = io.load_cams(files[0])
        src_keys, src_maps = io.load_cams(cams / "cams" / files[0].name)
        assert keys.tolist() == src_keys.tolist() and maps.shape == src_maps.shape
        assert 0 <= maps.min() and maps.max() <= 1 and not np.allclose(maps, src_maps, atol=1e-3)
        meta = json.loads((out / "meta.json").read_text())
        assert meta["stage"] == "cams" and meta["refinement"]["method"] == method
        # resume: one file removed -> only it is redone
        files[3].unlink()
        assert main(["refine-cams", "--cams", str(cams), "--output", str(out), "--method", method, *extra,
                     "--no-progress"]) == 0
        assert "1 written, 15 already there" in capsys.readouterr().out
        # the refined folder is a cams folder for the next stages
        assert main(["eval-cams", "--cams", str(out), "--no-progress"]) == 0
        assert main(["pseudo-labels", "--cams", str(out), "--output", str(seeds / f"labels-{method}"),
                     "--no-progress"]) == 0
        assert len(list((seeds / f"labels-{method}" / "labels").glob("*.png"))) == 16
        capsys.readouterr()
    assert (seeds / "refined-affinity" / "affinity.pt").is_file()
    # other settings into a finished folder: refused with one line, unless --overwrite
    assert main(["refine-cams", "--cams", str(cams), "--output", str(seeds / "refined-par"), "--method", "par",
                 "--iterations", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "other settings" in err and len(err.splitlines()) == 1
    assert main(["refine-cams", "--cams", str(cams), "--output", str(seeds / "refined-par"), "--method", "par",
                 "--iterations", "3", "--overwrite", "--no-progress"]) == 0
    assert "16 written" in capsys.readouterr().out
    # into its own seeds' folder, or from a folder that is not a cams folder: refused
    assert main(["refine-cams", "--cams", str(cams), "--output", str(cams), "--no-progress"]) == 2
    assert "another folder" in capsys.readouterr().err
    assert main(["refine-cams", "--cams", str(seeds / "labels-par"), "--output", str(seeds / "x"),
                 "--no-progress"]) == 2
    assert "not cams" in capsys.readouterr().err


def test_affinity_with_a_background_map_reuses_the_head_and_scores_against_it(seeds: Path) -> None:
    """--background-power changes only the walk: the trained head of another folder is reused
    (same settings but the walk's), the maps differ from the plain walk's, stay in [0, 1] and are
    not min-max normalised (a ratio against the background need not reach 1)."""
    import shutil

    plain = seeds / "bg-plain"
    params = RefineParams(method="affinity", epochs=1, iterations=8, label_crf=False)
    refine_cams(seeds / "cams", plain, params, progress=False)
    out = seeds / "bg-walk"
    out.mkdir()
    shutil.copy(plain / "affinity.pt", out / "affinity.pt")
    stamp = (out / "affinity.pt").stat().st_mtime_ns
    result = refine_cams(seeds / "cams", out, RefineParams(method="affinity", epochs=1, iterations=8,
                                                           background_power=4.0, label_crf=False), progress=False)
    assert result["written"] == 16 and (out / "affinity.pt").stat().st_mtime_ns == stamp  # not retrained
    assert json.loads((out / "meta.json").read_text())["refinement"]["background_power"] == 4.0
    peaks, changed = [], 0
    for path in sorted((out / "cams").glob("*.npy")):
        keys, maps = io.load_cams(path)
        _, plain_maps = io.load_cams(plain / "cams" / path.name)
        assert 0 <= maps.min() and maps.max() <= 1
        peaks += list(maps.reshape(len(keys), -1).max(1))
        changed += not np.allclose(maps, plain_maps, atol=1e-2)
    assert changed >= 8 and min(peaks) < 0.999
    # one image recomputed from its seeds, the stored head and the numerics: background first,
    # raised to the power, the class maps scored against it
    import torch.nn.functional as F
    from gainet.evaluation.jobs import load_trained
    from gainet.wsss.refine import AffinityHead, FeatureTap, _network_input, feature_layers

    meta = json.loads((seeds / "cams" / "meta.json").read_text())
    item = io.raw_item(io.open_dataset(meta["data"]), 5)
    keys, maps = io.load_cams(seeds / "cams" / "cams" / f"{item.image_id}.npy")
    gain, config, _ = load_trained(meta["checkpoint"], torch.device("cpu"))
    tap = FeatureTap(gain.model, feature_layers(config.model, ()))
    inputs = _network_input(item.image, meta, torch.device("cpu"))
    head = AffinityHead([f.shape[1] for f in tap(inputs)], 64)
    head.load_state_dict(torch.load(out / "affinity.pt", weights_only=True)["head"])
    with torch.no_grad():
        embedding = head.eval()(tap(inputs))
    seed_maps = torch.from_numpy(maps.astype(np.float32))[None]
    stacked = torch.cat([(1 - seed_maps.amax(1, keepdim=True)) ** 4.0, seed_maps], 1)
    walked = random_walk(F.interpolate(stacked, size=embedding.shape[-2:], mode="area"), embedding, radius=5,
                         beta=8.0, iterations=8)
    walked = F.interpolate(walked, size=maps.shape[-2:], mode="bilinear", align_corners=False)
    expected = background_scores(walked[:, 1:], walked[:, :1])[0].numpy()
    _, got = io.load_cams(out / "cams" / f"{item.image_id}.npy")
    np.testing.assert_allclose(got, expected, atol=3e-3)  # float16 storage
    assert "background_power" not in json.loads((plain / "meta.json").read_text())["refinement"]
    assert main(["refine-cams", "--cams", str(seeds / "cams"), "--output", str(out), "--method", "affinity",
                 "--epochs", "1", "--iterations", "8", "--background-power", "4", "--no-label-crf",
                 "--no-progress"]) == 0


def test_refine_matches_its_own_function_on_the_seeds(seeds: Path) -> None:
    """The stage's PAR output equals par_refine on the image and the seed maps, renormalised."""
    from gainet.core import normalise_maps

    result = refine_cams(seeds / "cams", seeds / "direct-par", RefineParams(method="par", iterations=4),
                         progress=False)
    assert result["written"] == 16
    meta = json.loads((seeds / "cams" / "meta.json").read_text())
    dataset = io.open_dataset(meta["data"])
    item = io.raw_item(dataset, 5)
    keys, maps = io.load_cams(seeds / "cams" / "cams" / f"{item.image_id}.npy")
    image = torch.from_numpy(item.image).permute(2, 0, 1)[None].float() / 255
    expected = normalise_maps(par_refine(image, torch.from_numpy(maps)[None], iterations=4)[0]).numpy()
    _, got = io.load_cams(seeds / "direct-par" / "cams" / f"{item.image_id}.npy")
    np.testing.assert_allclose(got, expected, atol=2e-3)  # float16 storage


def test_make_cams_class_agnostic_gives_one_map_for_every_class(seeds: Path) -> None:
    out = seeds / "agnostic"
    assert main(["make-cams", "--checkpoint", str(seeds / "cls" / "last.pt"), "--output", str(out),
                 "--class-agnostic", "--device", "cpu", "--no-progress"]) == 0
    multi = [io.load_cams(p) for p in sorted((out / "cams").glob("*.npy"))]
    multi = [maps for keys, maps in multi if len(keys) > 1]
    assert multi and all(np.array_equal(maps[0], maps[1]) for maps in multi)
    with pytest.raises(ValueError, match="not named"):
        from gainet.wsss.cams import make_cams

        make_cams(seeds / "cls" / "last.pt", seeds / "bad", attention_layer="stride16", device="cpu", progress=False)


def test_refine_cams_on_a_tiny_voc_layout_tree_keeps_native_sizes(tmp_path: Path, monkeypatch) -> None:
    """VOC-layout smoke test: images of different native sizes (chunks of one shape), both methods;
    the walk runs on the stride-4 grid of the square classifier input, or with
    ``--walk-base-size native`` of each image at its own size and aspect."""
    import shutil

    import gainet.wsss.refine as refine_module
    from conftest import build_voc_tree

    voc = tmp_path / "VOC2012"
    expected = build_voc_tree(voc)
    config = TrainConfig(dataset="voc", data_root=str(voc), train_split="train", val_split="val", batch_size=2,
                         image_size=32, model="small-cnn", model_width=8, epochs=1, warmup_epochs=0, method="cam",
                         progress=False, tensorboard=False, threads=1, output_dir=str(tmp_path / "cls"))
    train(config)
    out = tmp_path / "wsss"
    assert main(["make-cams", "--checkpoint", str(tmp_path / "cls" / "last.pt"), "--output", str(out / "cams"),
                 "--device", "cpu", "--no-progress"]) == 0
    assert main(["eval-cams", "--cams", str(out / "cams"), "--no-progress"]) == 0
    for method in ("par", "affinity"):
        assert main(["refine-cams", "--cams", str(out / "cams"), "--output", str(out / method), "--method", method,
                     "--epochs", "1", "--iterations", "4", "--no-label-crf", "--no-progress"]) == 0
        for image_id in ("img_a", "img_b"):
            keys, maps = io.load_cams(out / method / "cams" / f"{image_id}.npy")
            assert maps.shape == (len(keys), *expected[image_id]["mask"].shape)
        assert main(["eval-cams", "--cams", str(out / method), "--no-progress"]) == 0
        assert main(["pseudo-labels", "--cams", str(out / method), "--output", str(out / f"labels-{method}"),
                     "--no-progress"]) == 0
        assert io.load_index_png(out / f"labels-{method}" / "labels" / "img_a.png").shape == (60, 80)
    grids = []
    walk = refine_module.random_walk

    def recording_walk(maps, embedding, **kwargs):
        grids.append((tuple(maps.shape[-2:]), tuple(embedding.shape[-2:])))
        return walk(maps, embedding, **kwargs)

    monkeypatch.setattr(refine_module, "random_walk", recording_walk)
    (out / "native").mkdir()
    shutil.copy(out / "affinity" / "affinity.pt", out / "native" / "affinity.pt")
    assert main(["refine-cams", "--cams", str(out / "cams"), "--output", str(out / "native"), "--method", "affinity",
                 "--epochs", "1", "--iterations", "4", "--no-label-crf", "--walk-base-size", "native",
                 "--no-progress"]) == 0
    meta = json.loads((out / "native" / "meta.json").read_text())
    assert meta["refinement"]["walk_base_size"] == "native"
    assert "walk_base_size" not in json.loads((out / "affinity" / "meta.json").read_text())["refinement"]
    # the grid follows each image (stride 4, rounded up): 60 x 80 -> 15 x 20, 50 x 70 -> 13 x 18
    assert ((15, 20), (15, 20)) in grids and ((13, 18), (13, 18)) in grids  # img_a 60 x 80, img_b 50 x 70
    assert all(g[0] != (8, 8) for g in grids)
    keys, native = io.load_cams(out / "native" / "cams" / "img_a.npy")
    _, square = io.load_cams(out / "affinity" / "cams" / "img_a.npy")
    assert native.shape == square.shape == (len(keys), 60, 80) and not np.allclose(native, square, atol=1e-2)
    grids.clear()
    refine_cams(out / "cams", out / "square", RefineParams(method="affinity", epochs=1, iterations=4,
                                                            label_crf=False), progress=False)
    assert grids and all(g == ((8, 8), (8, 8)) for g in grids)  # 32-px training input, stride 4
    grids.clear()
    trained_on = []
    train_affinity = refine_module.train_affinity

    def recording_training(tap, head, inputs, seeds, params, **kwargs):
        trained_on.extend(tuple(x.shape[-2:]) for x in inputs)
        return train_affinity(tap, head, inputs, seeds, params, **kwargs)

    monkeypatch.setattr(refine_module, "train_affinity", recording_training)
    assert main(["refine-cams", "--cams", str(out / "cams"), "--output", str(out / "forty"), "--epochs", "1",
                 "--iterations", "4", "--no-label-crf", "--walk-base-size", "40", "--no-progress"]) == 0
    assert grids and all(g == ((10, 10), (10, 10)) for g in grids)  # a 40 x 40 square, stride 4
    # the default method is the learned one (issue 31), trained on the 32-px squares whatever the walk
    assert trained_on and set(trained_on) == {(32, 32)}
    assert json.loads((out / "forty" / "meta.json").read_text())["refinement"]["method"] == "affinity"
    assert RefineParams().method == "affinity"
    with pytest.raises(ValueError, match=r"walk_base_size \(--walk-base-size\): base size"):
        RefineParams(method="affinity", walk_base_size="square")
    with pytest.raises(ValueError, match="affinity"):
        RefineParams(method="par", walk_base_size="native")


# ----------------------------------------------------------------------------- issue 31: IRN's way
def irn_ir_label(image: np.ndarray, keys: np.ndarray, maps: np.ndarray, fg: float, bg: float) -> np.ndarray:
    """IRN's ``cam_to_ir_label`` written out on pydensecrf directly: the maps padded with a constant
    background score (fg, then bg), argmax, each refined by ``crf_inference_label`` (gt_prob 0.7,
    Gaussian 3/3, bilateral 50/5/10, 10 steps); fg where the first says so, bg where both do."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    lut = np.concatenate([[0], keys + 1])
    h, w = maps.shape[-2:]

    def crf(labels: np.ndarray) -> np.ndarray:
        d = dcrf.DenseCRF2D(w, h, len(lut))
        d.setUnaryEnergy(unary_from_labels(labels, len(lut), gt_prob=0.7, zero_unsure=False))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(image), compat=10)
        return np.argmax(np.array(d.inference(10)).reshape(len(lut), h, w), axis=0)

    def at(score: float) -> np.ndarray:
        padded = np.concatenate([np.full((1, h, w), score, dtype=maps.dtype), maps])
        return lut[crf(np.argmax(padded, axis=0))]

    fg_conf, bg_conf = at(fg), at(bg)
    conf = fg_conf.copy()
    conf[fg_conf == 0] = 255
    conf[bg_conf + fg_conf == 0] = 0
    return conf


def test_label_crf_seeds_are_irns_labels_and_snap_to_the_colour_edge() -> None:
    """The head's CRF labels equal IRN's cam_to_ir_label written on pydensecrf directly, and on the
    two-colour image (seed under-covering the left region by 5 px) the confident foreground reaches
    the colour edge where the raw seeds' stops short."""
    pytest.importorskip("pydensecrf.densecrf")
    from gainet.wsss.crf import CRFParams
    from gainet.wsss.refine import _seed_grid

    image, seed = two_regions()
    rgb = (image[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    maps = seed[0].numpy().astype(np.float32)                      # one map, class 2 of 3
    keys = np.array([2])
    got = _seed_grid(keys, maps, 3, 0.7, 0.3, (24, 64), image=rgb, crf=CRFParams()).numpy()
    expected = irn_ir_label(rgb, keys, maps, 0.7, 0.3)
    assert (got == expected).all()
    raw = _seed_grid(keys, maps, 3, 0.7, 0.3, (24, 64)).numpy()
    assert set(np.unique(got)) <= {0, 3, 255} and (got == 3).any()
    assert abs((got == 3).sum(1).mean() - 24) <= 1.0 and (raw == 3).sum(1).mean() <= 19


def test_label_crf_trains_the_head_on_irns_labels(seeds: Path, monkeypatch) -> None:
    """--label-crf reaches the head: the labels it is trained on are IRN's (recomputed on
    pydensecrf directly, then resized to the grid as the plain seeds are), they differ from the
    raw seeds' labels, the setting is recorded and a plain folder's head is not reused."""
    pytest.importorskip("pydensecrf.densecrf")
    import shutil

    import torch.nn.functional as F
    from gainet.wsss import refine as refine_module

    captured = {}
    original = refine_module.train_affinity

    def spy(tap, head, inputs, seeds_, params, **kwargs):
        captured.setdefault(params.label_crf, [s.clone() for s in seeds_])
        return original(tap, head, inputs, seeds_, params, **kwargs)

    monkeypatch.setattr(refine_module, "train_affinity", spy)
    plain = seeds / "crf-plain"
    refine_cams(seeds / "cams", plain, RefineParams(method="affinity", epochs=1, iterations=4, label_crf=False),
                progress=False)
    out = seeds / "crf-labels"
    out.mkdir()
    shutil.copy(plain / "affinity.pt", out / "affinity.pt")  # another head's file: must not be taken
    params = RefineParams(method="affinity", epochs=1, iterations=4, label_crf=True)
    assert refine_cams(seeds / "cams", out, params, progress=False)["written"] == 16
    assert set(captured) == {False, True}
    # the default, in the library and the CLI (with or without --label-crf): the finished folder
    # resumes with nothing to do; --no-label-crf is other settings
    assert RefineParams(method="affinity").label_crf
    assert "label_crf" not in RefineParams(method="par").to_dict()  # PAR folders made before still resume
    for flag in (["--label-crf"], []):
        assert main(["refine-cams", "--cams", str(seeds / "cams"), "--output", str(out), "--method", "affinity",
                     "--epochs", "1", "--iterations", "4", *flag, "--no-progress"]) == 0
    assert main(["refine-cams", "--cams", str(seeds / "cams"), "--output", str(out), "--method", "affinity",
                 "--epochs", "1", "--iterations", "4", "--no-label-crf", "--no-progress"]) == 2
    meta = json.loads((out / "meta.json").read_text())
    assert meta["refinement"]["label_crf"]["gt_prob"] == 0.7
    assert "label_crf" not in json.loads((plain / "meta.json").read_text())["refinement"]
    fg, bg = meta["refinement"]["conf_fg"], meta["refinement"]["conf_bg"]
    source = json.loads((seeds / "cams" / "meta.json").read_text())
    dataset = io.open_dataset(source["data"])
    differ = 0
    for index in range(16):
        item = io.raw_item(dataset, index)
        keys, maps = io.load_cams(seeds / "cams" / "cams" / f"{item.image_id}.npy")
        label = torch.from_numpy(irn_ir_label(item.image, keys, maps.astype(np.float32), fg, bg).astype(np.float32))
        grid = captured[True][index].shape
        expected = F.interpolate(label[None, None], size=grid, mode="nearest")[0, 0].long()
        assert torch.equal(captured[True][index], expected), index
        differ += not torch.equal(captured[True][index], captured[False][index])
    assert differ >= 4


def test_walk_normalise_and_the_background_comparison_on_the_same_scale(seeds: Path) -> None:
    """The same head and walk written three ways: ``minmax`` is the per-map min-max of ``none``,
    ``max`` is ``none`` over the image's largest value; and the background map with P = 1 equals
    ``none`` on every one-class image (the walk keeps 1 - M summing to 1 with M), where it differs
    from ``minmax``: the comparison the issue found confounded measured the normalisation."""
    import shutil

    from gainet.core import normalise_maps

    folders = {}
    head = None
    for name, options in (("none", {"walk_normalise": "none"}), ("max", {"walk_normalise": "max"}),
                          ("minmax", {}), ("bg1", {"background_power": 1.0})):
        out = seeds / f"norm-{name}"
        if head is not None:
            out.mkdir()
            shutil.copy(head, out / "affinity.pt")
        refine_cams(seeds / "cams", out, RefineParams(method="affinity", epochs=1, iterations=8, label_crf=False,
                                                      **options), progress=False)
        head = head or out / "affinity.pt"
        folders[name] = out
    assert json.loads((folders["max"] / "meta.json").read_text())["refinement"]["walk_normalise"] == "max"
    single = renormalised = 0
    for path in sorted((folders["none"] / "cams").glob("*.npy")):
        keys, raw = io.load_cams(path)
        raw = raw.astype(np.float64)
        _, minmax = io.load_cams(folders["minmax"] / "cams" / path.name)
        _, by_max = io.load_cams(folders["max"] / "cams" / path.name)
        _, ratio = io.load_cams(folders["bg1"] / "cams" / path.name)
        assert 0 <= raw.min() and raw.max() <= 1
        # float16 storage; an all-zero seed (the tiny classifier has some) stays 0
        np.testing.assert_allclose(by_max, raw / raw.max() if raw.max() > 0 else raw, atol=4e-3)
        spread = raw.reshape(len(keys), -1).max(1) - raw.reshape(len(keys), -1).min(1)
        if (spread > 0.05).all():  # where min-max is well conditioned against float16 storage
            np.testing.assert_allclose(minmax, normalise_maps(torch.from_numpy(raw)).numpy(), atol=0.05)
        if len(keys) == 1:
            np.testing.assert_allclose(ratio, raw, atol=2e-3)
            single += 1
        renormalised += not np.allclose(ratio, minmax, atol=1e-2)
    # the old comparison (background ratio against the min-max walk) differed on most images
    # through the normalisation alone
    assert single >= 8 and renormalised >= 8
    assert main(["refine-cams", "--cams", str(seeds / "cams"), "--output", str(folders["max"]), "--method",
                 "affinity", "--epochs", "1", "--iterations", "8", "--walk-normalise", "max", "--no-label-crf",
                 "--no-progress"]) == 0
    with pytest.raises(ValueError, match="walk_normalise"):
        RefineParams(method="affinity", walk_normalise="sum")
    with pytest.raises(ValueError, match="ratio"):
        RefineParams(method="affinity", walk_normalise="none", background_power=1.0)
    with pytest.raises(ValueError, match="affinity"):
        RefineParams(method="par", walk_normalise="none")
