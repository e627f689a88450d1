"""DAVIS-2017 video segmentation: label propagation on a synthetic video with known answers, J and F against
hand-made masks and a brute-force reading of their definition, the written PNGs, the entry script."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_run_header
from evalkit import save_ours, tiny_pretraining_model
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

import main_video_segmentation
from patchmix.evaluation import label_propagation
from patchmix.evaluation.davis import (
    boundary_map,
    boundary_tolerance,
    davis_palette,
    davis_videos,
    f_measure,
    jaccard,
    read_mask,
    score_video,
    write_indexed_png,
    write_synthetic_davis,
)
from patchmix.evaluation.video_segmentation import (
    PatchTokens,
    VideoSegConfig,
    first_frame_labels,
    frame_size,
    labels_to_ids,
    neighbourhood,
    propagate,
    segment_video,
    summarise,
)

CPU = ["--device", "cpu", "--num-workers", "0"]


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    """5 frames of 64x64: a red square (id 1) moving right, a green disc (id 2) moving left, 3 px per frame."""
    return write_synthetic_davis(tmp_path_factory.mktemp("davis"), frames=5, size=64, step=3)


@pytest.fixture(scope="module")
def script_run(tmp_path_factory, davis):
    """The entry script on the synthetic folder with a real tiny ViT checkpoint (ours, 4-px patches)."""
    tmp = tmp_path_factory.mktemp("vos")
    weights = save_ours(tiny_pretraining_model(), tmp / "tiny.pth")
    out = tmp / "out"
    argv = ["--config", "davis_vit_small", "--data-path", str(davis), "--pretrained-weights", str(weights),
            "--short-side", "64", "--output-dir", str(out), *CPU]
    assert main_video_segmentation.main(argv) == 0
    return out, argv


def colour_features(images: torch.Tensor) -> torch.Tensor:
    """A "model" whose patch feature is the patch's mean colour (4-px patches): the right answer on the
    synthetic video, where colour alone tells the objects apart."""
    return F.avg_pool2d(images, 4).permute(0, 2, 3, 1)


def shuffled_features(images: torch.Tensor) -> torch.Tensor:
    """The same features at random positions: no correspondence left."""
    features = colour_features(images)
    b, h, w, d = features.shape
    order = torch.randperm(h * w, generator=torch.Generator().manual_seed(len(images)))
    return features.reshape(b, h * w, d)[:, order].reshape(b, h, w, d)


def scores(davis, extract, **settings):
    video = davis_videos(davis)[0]
    cfg = VideoSegConfig(short_side=64, num_workers=0, **settings)
    predictions, _, objects = segment_video(video, extract, 4, cfg)
    annotations = [read_mask(video.annotation(frame))[0] for frame in video.frames]
    return summarise(score_video(annotations, predictions, objects)), predictions, annotations


# ------------------------------------------------------------------------------------------------------------
# Propagation on a video with a known answer


@pytest.fixture(scope="module")
def colour_run(davis):
    return scores(davis, colour_features)


def test_colour_features_track_both_shapes(colour_run):
    result, predictions, annotations = colour_run
    assert result["J&F-Mean"] > 0.8
    for obj in ("1", "2"):
        assert result["objects"][obj]["J-Mean"] > 0.8 and result["objects"][obj]["frames"] == 3
    # The last frame (not scored, as DAVIS) is tracked too: the square moved 12 px and the prediction followed.
    last, truth = predictions[-1], annotations[-1]
    assert jaccard(torch.from_numpy(truth == 1), torch.from_numpy(last == 1)) > 0.75
    assert jaccard(torch.from_numpy(annotations[0] == 1), torch.from_numpy(last == 1)) < 0.6


def test_shuffled_features_lose_the_shapes(davis):
    result, _, _ = scores(davis, shuffled_features)
    assert result["J&F-Mean"] < 0.35


def test_a_small_neighbourhood_without_previous_frames_loses_the_moving_shapes(davis, colour_run):
    """The shapes move 3 px a frame. A patch that may only look 1 patch (4 px) around its position, in the first
    frame only (no previous frames in the context), cannot reach the shape's pixels once it has moved more than
    that: the neighbourhood restriction and the context both matter."""
    near_only, _, _ = scores(davis, colour_features, size_mask_neighborhood=1, n_last_frames=0)
    assert near_only["J&F-Mean"] < colour_run[0]["J&F-Mean"] - 0.05


def reference_propagation(target, sources, labels, allowed, k, temperature):
    """The rule read literally, one target patch at a time: affinities exp(cos / T) to the allowed sources,
    zero below the k-th largest (ties kept), normalised."""
    contexts, n, _ = sources.shape
    out = torch.zeros(n, labels.shape[-1], dtype=torch.float64)
    for i in range(n):
        affinity = torch.zeros(contexts, n, dtype=torch.float64)
        for c in range(contexts):
            for j in range(n):
                if allowed is None or allowed[i, j]:
                    affinity[c, j] = math.exp(float(target[i] @ sources[c, j]) / temperature)
        kth = affinity.flatten().sort(descending=True).values[k - 1]
        affinity[affinity < kth] = 0
        affinity /= affinity.sum()
        out[i] = (affinity[..., None] * labels.double()).sum(dim=(0, 1))
    return out


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_propagation_is_the_rule_for_every_patch_at_once(radius):
    torch.manual_seed(0)
    grid, contexts, dim, objects = (4, 5), 3, 6, 3
    n = grid[0] * grid[1]
    target = F.normalize(torch.randn(n, dim), dim=1)
    sources = F.normalize(torch.randn(contexts, n, dim), dim=2)
    sources[1, 7] = sources[2, 3] = sources[0, 0]  # exact ties: kept together, as the official threshold does
    labels = torch.softmax(torch.randn(contexts, n, objects), dim=-1)
    allowed = neighbourhood(grid, radius)
    got = propagate(target, sources.clone(), labels, allowed, topk=5, temperature=0.1)
    want = reference_propagation(target, sources, labels, allowed, 5, 0.1)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got.sum(dim=1), torch.ones(n), atol=1e-5)


def test_neighbourhood_is_a_square_window_of_patches():
    grid, radius = (5, 7), 2
    allowed = neighbourhood(grid, radius)
    for i in range(grid[0] * grid[1]):
        for j in range(grid[0] * grid[1]):
            near = abs(i // 7 - j // 7) <= radius and abs(i % 7 - j % 7) <= radius
            assert bool(allowed[i, j]) == near
    assert neighbourhood(grid, 0) is None


def test_the_context_is_the_first_frame_and_the_last_n_frames(monkeypatch):
    calls = []
    real = label_propagation.propagate

    def spy(target, sources, labels, allowed, topk, temperature):
        calls.append(sources.clone())
        return real(target, sources, labels, allowed, topk, temperature)

    monkeypatch.setattr(label_propagation, "propagate", spy)
    torch.manual_seed(0)
    frames = [F.normalize(torch.randn(3, 3, 4), dim=-1) for _ in range(7)]
    labels = F.one_hot(torch.randint(0, 2, (3, 3)), 2).float()
    outputs = list(label_propagation.propagate_video(frames, labels, n_last_frames=2, radius=12))
    assert len(outputs) == 6 and [len(c) for c in calls] == [1, 2, 3, 3, 3, 3]
    for t, sources in enumerate(calls, start=1):
        expected = [frames[0]] + frames[max(1, t - 2):t]
        torch.testing.assert_close(sources, torch.stack([f.reshape(9, 4) for f in expected]))


def test_labels_to_ids_rescales_each_object_before_the_argmax():
    """Object maps are min-max rescaled first (official norm_mask): a weak but peaked object wins its peak."""
    soft = torch.tensor([[[0.6, 0.4], [1.0, 0.0]]])                    # 1 x 2 patches, background + 1 object
    assert labels_to_ids(soft, 1, (1, 2)).tolist() == [[1, 0]]            # raw argmax would give [[0, 0]]
    # Upsampling by the patch size, then nearest resize to the original frame size.
    soft = torch.zeros(2, 2, 3)
    soft[..., 0] = 1
    soft[1, 1] = torch.tensor([0.0, 0.0, 1.0])
    ids = labels_to_ids(soft, 4, (8, 8))
    assert ids.shape == (8, 8) and set(np.unique(ids)) == {0, 2}
    assert (ids[5:, 5:] == 2).all() and (ids[:3] == 0).all()


def test_first_frame_labels_are_the_annotation_at_patch_resolution():
    ids = np.zeros((8, 12), dtype=np.uint8)
    ids[:4, :6] = 1
    ids[4:, 6:] = 2
    ids[:4, 8:] = 255                                                     # void: background
    labels = first_frame_labels(ids, (2, 3), 2)                          # Pillow's nearest: the cell centres
    assert labels.shape == (2, 3, 3) and labels.sum(-1).eq(1).all()
    assert labels.argmax(-1).tolist() == [[1, 0, 0], [0, 2, 2]]


def test_frame_size_is_the_official_one():
    assert frame_size(480, 854) == (480, 832)
    assert frame_size(854, 480) == (832, 480)
    assert frame_size(64, 64, 64) == (64, 64)
    assert frame_size(1080, 1920) == (480, 832)


# ------------------------------------------------------------------------------------------------------------
# Patch features


def tiny_vit(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                              dynamic_img_size=True, **kwargs).eval()
    with torch.no_grad():
        model.pos_embed.normal_(0, 1)
    return model


def manual_tokens(model: VisionTransformer, images: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """A plain ViT forward with a given position table (patch part, then the prefix tokens)."""
    x = model.patch_embed.proj(images).flatten(2).transpose(1, 2)
    lead = 0 if model.no_embed_class else model.num_prefix_tokens
    x = x + table[:, lead:]
    if model.cls_token is not None:
        x = torch.cat([model.cls_token.expand(len(x), -1, -1) + table[:, :lead], x], dim=1)
    x = model.norm(model.blocks(x))
    return x[:, model.num_prefix_tokens:]


def dino_table(model: VisionTransformer, grid: tuple[int, int]) -> torch.Tensor:
    lead = 0 if model.no_embed_class else model.num_prefix_tokens
    patches = model.pos_embed[:, lead:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(patches, scale_factor=((grid[0] + 0.1) / 4, (grid[1] + 0.1) / 4), mode="bicubic")
    return torch.cat([model.pos_embed[:, :lead], resized.flatten(2).transpose(1, 2)], dim=1)


@pytest.mark.parametrize("kind", ["cls", "no_cls"])
def test_patch_tokens_drop_prefix_tokens_and_resize_positions_as_dino(kind):
    """With a CLS token (ours) and without one (SelfPatch's backbone: no CLS, no final norm)."""
    options = {} if kind == "cls" else {"class_token": False, "global_pool": "avg", "no_embed_class": True,
                                        "final_norm": False}
    model = tiny_vit(**options)
    extract = PatchTokens(model)
    images = torch.randn(2, 3, 16, 16)
    native = extract(images)
    assert native.shape == (2, 4, 4, 32)
    torch.testing.assert_close(native.reshape(2, 16, 32), model.forward_features(images)[:, model.num_prefix_tokens:])
    torch.testing.assert_close(native.reshape(2, 16, 32), manual_tokens(model, images, model.pos_embed))

    frames = torch.randn(2, 3, 24, 36)                                   # a 6 x 9 grid
    table, original = dino_table(model, (6, 9)), model.pos_embed
    with torch.no_grad():
        tokens = extract(frames)
        torch.testing.assert_close(tokens.reshape(2, 54, 32), manual_tokens(model, frames, table))
        assert model.pos_embed is original and tuple(model.patch_embed.grid_size) == (4, 4)   # restored
        by_timm = PatchTokens(model, "timm")(frames)
    torch.testing.assert_close(by_timm.reshape(2, 54, 32), model.forward_features(frames)[:, model.num_prefix_tokens:])
    assert (by_timm - tokens).abs().max() > 1e-4                         # the two resamplings do differ


# ------------------------------------------------------------------------------------------------------------
# J and F


def square(top: int, left: int, side: int, size: int = 64) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_jaccard_against_hand_made_masks():
    a = square(10, 10, 10)
    assert jaccard(a, a) == 1
    assert jaccard(a, square(40, 40, 10)) == 0
    assert jaccard(a, square(10, 15, 10)).item() == pytest.approx(50 / 150)   # 5 of 10 columns shared
    empty = torch.zeros(64, 64, dtype=torch.bool)
    assert jaccard(empty, empty) == 1 and jaccard(a, empty) == 0


def test_boundary_map_of_a_square_is_the_outline_of_a_box_shifted_towards_the_origin():
    edges = boundary_map(square(20, 20, 20))
    outline = torch.zeros(64, 64, dtype=torch.bool)
    outline[19:40, 19:40] = True                                         # rows and columns 19..39
    outline[20:39, 20:39] = False
    assert torch.equal(edges, outline) and int(edges.sum()) == 80


def test_f_measure_of_a_shifted_square_by_hand():
    """A 20-px square and the same square 5 px to the right: their 80-px boundary outlines share the top and
    bottom rows for 16 px, 2 more px lie within 2 px of the other's corner, and 2 px of each vertical side are
    within 2 px of the other's top or bottom row: 40 of 80 matched, P = R = F = 0.5. Within 4 px: 20 + 20 + 8 =
    48 of 80, F = 0.6. Within 5 px everything matches."""
    a, b = square(20, 20, 20), square(20, 25, 20)
    assert f_measure(a, b, bound_th=2).item() == pytest.approx(0.5)
    assert f_measure(a, b, bound_th=4).item() == pytest.approx(0.6)
    assert f_measure(a, b, bound_th=5).item() == pytest.approx(1.0)
    assert f_measure(a, a).item() == 1.0
    assert f_measure(a, square(2, 50, 8)).item() == 0.0                 # far apart
    empty = torch.zeros(64, 64, dtype=torch.bool)
    assert f_measure(a, empty).item() == 0.0 and f_measure(empty, empty).item() == 1.0


def test_the_default_tolerance_is_0008_of_the_diagonal():
    assert boundary_tolerance(480, 854) == 8                             # ceil(0.008 * 979.7)
    assert boundary_tolerance(64, 64) == 1 and boundary_tolerance(64, 64, 3) == 3
    assert boundary_tolerance(100, 100) == 2                             # ceil(1.13)
    a = square(20, 20, 40, size=100)
    assert f_measure(a, torch.roll(a, 2, dims=1)).item() == 1.0          # within the default tolerance
    assert f_measure(a, torch.roll(a, 3, dims=1)).item() < 1.0


def brute_force_f(gt: np.ndarray, pred: np.ndarray, radius: int) -> float:
    """F from the definition with loops: boundary pixels (a neighbour E, S or SE differs, with DAVIS's image
    border rules) and Euclidean distances."""
    def edges(m):
        h, w = m.shape
        out = np.zeros_like(m)
        for y in range(h):
            for x in range(w):
                if y == h - 1 and x == w - 1:
                    continue
                east = m[y, x + 1] if x + 1 < w else False
                south = m[y + 1, x] if y + 1 < h else False
                diag = m[y + 1, x + 1] if (x + 1 < w and y + 1 < h) else False
                if y == h - 1:
                    out[y, x] = m[y, x] != east
                elif x == w - 1:
                    out[y, x] = m[y, x] != south
                else:
                    out[y, x] = m[y, x] != east or m[y, x] != south or m[y, x] != diag
        return out

    def matched(src, dst):
        points, others = np.argwhere(src), np.argwhere(dst)
        if len(others) == 0:
            return 0
        d2 = ((points[:, None, :] - others[None, :, :]) ** 2).sum(-1)
        return int((d2.min(axis=1) <= radius * radius).sum())

    g, p = edges(gt), edges(pred)
    ng, npred = int(g.sum()), int(p.sum())
    precision = matched(p, g) / npred if npred else 1.0
    recall = matched(g, p) / ng if ng else 1.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_f_measure_equals_a_brute_force_reading_of_the_definition():
    rng = np.random.default_rng(0)
    for trial in range(4):
        coarse = torch.from_numpy(rng.random((2, 1, 5, 6))).float()
        blobs = F.interpolate(coarse, size=(30, 37), mode="bilinear", align_corners=False)[:, 0] > 0.5
        gt, pred = blobs[0], blobs[1] if trial else torch.roll(blobs[0], 2, dims=0)
        for radius in (1, 2, 3):
            ours = f_measure(gt, pred, bound_th=radius).item()
            assert ours == pytest.approx(brute_force_f(gt.numpy(), pred.numpy(), radius), abs=1e-12)


def test_score_video_leaves_out_the_first_and_last_frames():
    truth = [np.full((8, 8), 1, np.uint8) for _ in range(4)]
    preds = [np.zeros((8, 8), np.uint8)] + [np.full((8, 8), 1, np.uint8)] * 2 + [np.zeros((8, 8), np.uint8)]
    result = score_video(truth, preds, 1)
    assert result == {1: {"J": [1.0, 1.0], "F": [1.0, 1.0]}}
    preds[1] = np.zeros((8, 8), np.uint8)
    assert score_video(truth, preds, 1)[1]["J"] == [0.0, 1.0]


# ------------------------------------------------------------------------------------------------------------
# Files and the entry script


def test_indexed_png_round_trip(tmp_path):
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_indexed_png(tmp_path / "a.png", ids)
    back, palette = read_mask(tmp_path / "a.png")
    assert np.array_equal(back, ids) and np.array_equal(palette, davis_palette())
    assert davis_palette()[:3].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]


def test_the_script_writes_palette_masks_in_the_official_layout(script_run, davis):
    out, _ = script_run
    video = davis_videos(davis)[0]
    written = sorted(p.name for p in (out / "shapes").iterdir())
    assert written == [f.stem + ".png" for f in video.frames]
    for frame in video.frames:
        image = Image.open(out / "shapes" / f"{frame.stem}.png")
        assert image.mode == "P" and image.size == (64, 64)
        ids = np.asarray(image)
        assert set(np.unique(ids)) == {0, 1, 2}
        truth = read_mask(video.annotation(frame))[0]
        for obj in (1, 2):                                               # each id sits on its own object
            assert ((ids == obj) & (truth == obj)).sum() > 0.5 * (truth == obj).sum()
    first, palette = read_mask(out / "shapes" / "00000.png")
    assert np.array_equal(first, read_mask(video.first_annotation)[0])  # the given annotation, unchanged
    assert np.array_equal(palette, read_mask(video.first_annotation)[1])


def test_the_script_writes_results(script_run):
    out, _ = script_run
    results = json.loads((out / "results.json").read_text())
    assert results["objects"] == 2 and results["videos_evaluated"] == 1
    video = results["videos"]["shapes"]
    assert set(video["objects"]) == {"1", "2"} and video["frames"] == 5
    j = np.mean([o["J-Mean"] for o in video["objects"].values()])
    f = np.mean([o["F-Mean"] for o in video["objects"].values()])
    assert results["J-Mean"] == pytest.approx(j) and results["F-Mean"] == pytest.approx(f)
    assert results["J&F-Mean"] == pytest.approx((j + f) / 2) and 0.5 < results["J&F-Mean"] <= 1
    assert results["settings"]["topk"] == 5 and results["settings"]["n_last_frames"] == 7
    assert results["weights"]["encoder"] == "momentum_encoder"
    assert json.loads((out / "config.json").read_text())["size_mask_neighborhood"] == 12


def test_score_only_rescores_the_written_masks(script_run, tmp_path, capsys):
    out, argv = script_run
    before = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert main_video_segmentation.main(argv + ["--score-only"]) == 0
    assert_run_header(capsys.readouterr().out, out)
    after = json.loads((out / "results.json").read_text())
    assert after["J&F-Mean"] == before["J&F-Mean"] and after["videos"] == before["videos"]
    # A missing mask is a one-line error.
    copy = tmp_path / "partial"
    (copy / "shapes").mkdir(parents=True)
    (copy / "shapes" / "00000.png").write_bytes((out / "shapes" / "00000.png").read_bytes())
    error = one_line_error(capsys, argv + ["--score-only", "--output-dir", str(copy)])
    assert "00001.png not found" in error


def one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main_video_segmentation.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.out + captured.err
    return captured.err


def test_a_missing_davis_folder_is_a_one_line_error_that_shows_the_layout(capsys, tmp_path):
    base = ["--config", "davis_vit_small", "--output-dir", str(tmp_path / "out"), *CPU]
    error = one_line_error(capsys, base + ["--data-path", str(tmp_path / "nothing")])
    assert "not a DAVIS-2017 folder" in error and "JPEGImages/480p/<video>/*.jpg" in error
    assert "ImageSets/2017/val.txt" in error
    assert "set --data-path" in one_line_error(capsys, base)
    (tmp_path / "half" / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "half" / "ImageSets" / "2017" / "val.txt").write_text("dogs\n")
    assert "JPEGImages" in one_line_error(capsys, base + ["--data-path", str(tmp_path / "half")])


def test_command_line_mistakes_are_one_line_errors(capsys, davis, tmp_path):
    error = one_line_error(capsys, ["--data-path", str(davis)])
    assert "no --config given" in error and "davis_vit_small" in error
    base = ["--config", "davis_vit_small", "--data-path", str(davis), "--output-dir", str(tmp_path), *CPU]
    assert "--img-size is not used" in one_line_error(capsys, base + ["--img-size", "224"])
    assert "--topk 0: it must be >= 1" in one_line_error(capsys, base + ["--topk", "0"])
    assert "--videos nope" in one_line_error(capsys, base + ["--videos", "nope"])


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_share_the_videos_and_give_the_one_process_results(tmp_path, script_run):
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    root = tmp_path / "davis"
    for seed, name in enumerate(("alpha", "beta", "gamma")):
        write_synthetic_davis(root, frames=4 + seed, size=64, name=name, seed=seed)
    (root / "ImageSets" / "2017" / "val.txt").write_text("alpha\nbeta\ngamma\n")
    _, argv = script_run
    weights = argv[argv.index("--pretrained-weights") + 1]
    common = ["--config", "davis_vit_small", "--data-path", str(root), "--pretrained-weights", weights,
              "--short-side", "64", *CPU]
    assert main_video_segmentation.main(common + ["--output-dir", str(tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "main_video_segmentation.py", *common, "--output-dir", str(tmp_path / "two")],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rank 1 [1/1] beta" in result.stdout
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert list(two["videos"]) == ["alpha", "beta", "gamma"] and two["videos"] == one["videos"]
    assert two["J&F-Mean"] == one["J&F-Mean"]
    for name in ("alpha", "beta", "gamma"):
        frames = len(list((root / "JPEGImages" / "480p" / name).glob("*.jpg")))
        assert len(list((tmp_path / "two" / name).glob("*.png"))) == frames
