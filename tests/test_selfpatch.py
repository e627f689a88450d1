"""SelfPatch as a method: neighbourhoods, top-k selection, the head's vectors, the two losses and their centres, the
patch-loss view pairs, frozen last layers, recipes, one-line errors and a resumable run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import main_pretrain
from patchmix.config import parse_config, recipe_names
from patchmix.engine import train_step
from patchmix.methods import SelfPatch, SelfPatchConfig, get_method
from patchmix.methods.dino import DINOStepValues
from patchmix.methods.selfpatch import SelfPatchLoss
from patchmix.models import DINOPositionSelfPatchViT, build_backbone
from patchmix.pretrain import PretrainTask
from patchmix.selfpatch_head import SelfPatchHead, neighbour_index, select_neighbours
from patchmix.weights import load_weights

# 16-px global crops and 12-px local crops of 4-px patches: a 4x4 and a 3x3 grid (the smallest SelfPatch accepts).
TINY = dict(arch="vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
HEAD = dict(out_dim=64, hidden_dim=32, bottleneck_dim=8)
FLAGS = ["--config", "selfpatch_demo", "--img-size", "16", "--patch-size", "4", "--embed-dim", "32", "--depth",
         "2", "--num-heads", "2", "--hidden-dim", "32", "--bottleneck-dim", "16", "--out-dim", "64",
         "--out-dim-selfpatch", "32", "--local-crops-number", "2", "--local-crop-size", "12", "--batch-size", "16",
         "--epochs", "2", "--warmup-epochs", "0.5", "--freeze-last-layer", "1", "--num-workers", "0", "--device",
         "cpu", "--train-subset", "64", "--log-freq", "1", "--no-knn-eval"]


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors are tiny: one thread is fastest, and immune to other jobs on the same cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(k_num: int = 4, **head) -> SelfPatch:
    torch.manual_seed(0)
    model = SelfPatch(TINY, drop_path_rate=0.0, head={**HEAD, **head}, patch_out_dim=48, k_num=k_num)
    with torch.no_grad():  # a teacher unlike the student and non-zero centres, so that mix-ups show
        for p in model.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.dino_loss.center.normal_(0, 0.1)
        model.dino_loss.patch_center.normal_(0, 0.1)
    return model


def crops(batch: int = 3, local: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return ([torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(2)]
            + [torch.randn(batch, 3, 12, 12, generator=generator) for _ in range(local)])


def values(momentum: float = 0.9, temp: float = 0.04, frozen: bool = False) -> DINOStepValues:
    return DINOStepValues(1e-2, 0.04, momentum, temp, frozen)


class Fixed:
    """A schedule giving the same values at every step."""

    def __init__(self, v: DINOStepValues) -> None:
        self.v, self.peak_lr = v, v.lr

    def at(self, step: int) -> DINOStepValues:
        return self.v


def step(model: SelfPatch, v: DINOStepValues, views: list[torch.Tensor]):
    task = PretrainTask(model, model, SelfPatchConfig(weight_decay=0.04), steps_per_epoch=1)
    task.schedules = Fixed(v)
    return train_step(task, torch.amp.GradScaler("cpu", enabled=False), (views, None), 0, torch.device("cpu"))


# ---------------------------------------------------------------------------------------------- neighbourhoods

def loop_neighbours(grid: int) -> list[list[int]]:
    """The 8 neighbours of each patch written out by hand: rows r-1..r+1 and columns c-1..c+1 modulo the grid
    (the official mask arithmetic), the patch itself left out, listed by increasing flat index."""
    out = []
    for patch in range(grid * grid):
        r, c = patch // grid, patch % grid
        rows = {(r - 1) % grid, r, (r + 1) % grid}
        cols = {(c - 1) % grid, c, (c + 1) % grid}
        out.append([i for i in range(grid * grid) if i // grid in rows and i % grid in cols and i != patch])
    return out


@pytest.mark.parametrize("grid", [3, 4, 5, 6, 14])
def test_neighbour_index_is_the_wrapped_3x3_window_of_the_official_arithmetic(grid):
    index = neighbour_index(grid)
    assert index.shape == (grid * grid, 8) and index.dtype == torch.long
    assert index.tolist() == loop_neighbours(grid)


def test_neighbours_at_the_grid_edges_wrap_around():
    index = neighbour_index(4).tolist()
    assert index[0] == [1, 3, 4, 5, 7, 12, 13, 15]      # top-left corner: bottom row and right column join in
    assert index[15] == [0, 2, 3, 8, 10, 11, 12, 14]    # bottom-right corner: top row and left column
    assert index[7] == [0, 2, 3, 4, 6, 8, 10, 11]       # right edge, second row: column 0 joins in
    assert index[5] == [0, 1, 2, 4, 6, 8, 9, 10]        # inside: the plain 3x3 window
    assert sorted(neighbour_index(3)[4].tolist()) == [0, 1, 2, 3, 5, 6, 7, 8]  # 3x3: every other patch
    with pytest.raises(ValueError, match="smaller than the 3x3"):
        neighbour_index(2)


def test_topk_picks_the_most_cosine_similar_neighbours_and_the_head_aggregates_them():
    torch.manual_seed(0)
    head = SelfPatchHead(16, num_heads=2).eval()
    grid, k = 4, 3
    tokens = torch.randn(2, grid * grid, 16)
    tokens[1, 6] *= 50.0  # a long token: cosine similarity must ignore the length
    got = head.aggregate_neighbours(tokens, k)
    selected = select_neighbours(tokens, k)
    index = neighbour_index(grid)
    for b in range(2):
        for patch in range(grid * grid):
            candidates = index[patch].tolist()
            cosine = [F.cosine_similarity(tokens[b, patch], tokens[b, j], dim=0).item() for j in candidates]
            chosen = [candidates[i] for i in sorted(range(8), key=lambda i: -cosine[i])[:k]]
            assert torch.equal(selected[b, patch], tokens[b, chosen]), (b, patch)  # most similar first
            expected = head(tokens[b, chosen][None])[0]  # the head over the chosen neighbours only
            assert torch.allclose(got[b, patch], expected, atol=1e-5), (b, patch)
    # one neighbour made identical to its patch is always chosen
    tokens[0, 1] = tokens[0, 0] * 3
    single = head.aggregate_neighbours(tokens, 1)
    assert torch.allclose(single[0, 0], head(tokens[0, [1]][None])[0], atol=1e-5)


def class_attention_reference(head: SelfPatchHead, tokens: torch.Tensor) -> torch.Tensor:
    """The head written out: per block, pre-norm multi-head attention of the query over [query, tokens] with
    separate q, k, v projections, a residual, an MLP with a residual; a final LayerNorm of the query."""
    query = head.cls_token.expand(tokens.shape[0], -1, -1)
    heads = head.cls_blocks[0].attn.num_heads
    for block in head.cls_blocks:
        a = block.attn
        u = block.norm1(torch.cat([query, tokens], dim=1))
        q = F.linear(u[:, :1], a.q.weight, a.q.bias)
        k = F.linear(u, a.k.weight, a.k.bias)
        v = F.linear(u, a.v.weight, a.v.bias)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(query.shape)
        query = query + a.proj(attended)
        query = query + block.mlp(block.norm2(query))
    return head.norm(query[:, 0])


def test_the_heads_image_vector_is_class_attention_over_all_patches():
    torch.manual_seed(1)
    vit = build_backbone(**TINY, selfpatch_head=True).eval()
    images = torch.randn(2, 3, 16, 16)
    tokens = vit.forward_features(images)
    assert tokens.shape == (2, 16, 32)  # every patch token, no CLS
    vector = vit.forward_head(tokens, pre_logits=True)
    assert torch.allclose(vector, class_attention_reference(vit.ca_head, tokens), atol=1e-5)
    # the patch order does not matter to the aggregate, every patch does
    assert torch.allclose(vit.ca_head(tokens.flip(1)), vector, atol=1e-5)
    changed = tokens.clone()
    changed[:, 5] = torch.randn(2, 32)
    assert not torch.allclose(vit.ca_head(changed), vector, atol=1e-3)


def test_local_crops_resample_the_position_table_as_dino():
    torch.manual_seed(2)
    vit = build_backbone(**TINY, selfpatch_head=True, pos_interpolation="dino")
    assert isinstance(vit, DINOPositionSelfPatchViT)
    grid = vit.pos_embed[0].T.reshape(1, 32, 4, 4)
    table = F.interpolate(grid, scale_factor=(3.1 / 4, 3.1 / 4), mode="bicubic").reshape(32, 9).T
    x = torch.randn(2, 3, 3, 32)
    assert torch.allclose(vit._pos_embed(x), x.reshape(2, 9, 32) + table, atol=1e-6)


# ---------------------------------------------------------------------------------------------- the step

def test_networks_give_image_logits_and_per_crop_patch_logits():
    model = tiny()
    views = crops()
    with torch.no_grad():
        image, patches = model.student(views)
        t_image, t_patches = model.teacher(views, k_num=4)
    assert image.shape == t_image.shape == (4 * 3, 64)
    assert [tuple(p.shape) for p in patches] == [(3, 16, 48)] * 2 + [(3, 9, 48)] * 2
    net = model.student  # student patches: its own tokens after the head's LayerNorm, through p_head
    tokens = net.backbone.forward_features(views[2])
    assert torch.allclose(patches[2], net.p_head(net.ca_head.norm(tokens)), atol=1e-5)
    teacher = model.teacher  # teacher patches: the aggregated top-4 neighbours, through its p_head
    tokens = teacher.backbone.forward_features(views[1])
    assert torch.allclose(t_patches[1], teacher.p_head(teacher.ca_head.aggregate_neighbours(tokens, 4)), atol=1e-5)
    assert set(model.state_dict()) >= {"student.ca_head.cls_token", "teacher.c_head.last_layer.weight_v",
                                       "student.p_head.mlp.0.weight", "dino_loss.patch_center"}
    assert not any(".backbone.ca_head." in k for k in model.state_dict())  # the official layout


def cross_entropy(teacher: torch.Tensor, centre: torch.Tensor, student: torch.Tensor, temp: float) -> torch.Tensor:
    """Mean over rows of H(softmax((t - c) / temp), softmax(s / 0.1))."""
    q = torch.softmax((teacher - centre) / temp, dim=-1)
    return -(q * torch.log_softmax(student / 0.1, dim=-1)).sum(-1).mean()


def test_loss_pairs_and_centres_follow_the_direct_formula():
    model = tiny()
    views = crops()
    batch, n = 3, len(views)
    with torch.no_grad():
        s_image, s_patches = model.student(views)
        t_image, t_patches = model.teacher(views, k_num=4)
    centre, patch_centre = model.dino_loss.center.clone(), model.dino_loss.patch_center.clone()
    s_image, t_image = s_image.chunk(n), t_image.chunk(n)
    image_terms = [cross_entropy(t_image[i], centre, s_image[j], 0.05) for i in (0, 1) for j in range(n) if j != i]
    image_loss = sum(image_terms) / len(image_terms)  # 2 x (n - 1) pairs: a global teacher crop, another crop
    patch_loss = sum(cross_entropy(t_patches[i], patch_centre, s_patches[i], 0.05) for i in range(n)) / n
    model.train()
    out = model(views, values(temp=0.05))
    assert out.terms["image_loss"].item() == pytest.approx(image_loss.item(), rel=1e-5)
    assert out.terms["patch_loss"].item() == pytest.approx(patch_loss.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((image_loss + 0.1 * patch_loss).item(), rel=1e-5)
    # pairing every crop with itself is what is computed, not any other pairing of the crops
    swapped = sum(cross_entropy(t_patches[i], patch_centre, s_patches[i ^ 1], 0.05) for i in range(n)) / n
    assert abs(swapped.item() - patch_loss.item()) > 1e-3
    # both centres moved towards the teacher means: every crop (local ones too) and every patch of every crop
    image_mean = torch.cat(t_image).mean(0, keepdim=True)
    patches = torch.cat([t.reshape(-1, t.shape[-1]) for t in t_patches])
    assert patches.shape[0] == batch * (16 + 16 + 9 + 9)
    assert torch.allclose(model.dino_loss.center, 0.9 * centre + 0.1 * image_mean, atol=1e-6)
    assert torch.allclose(model.dino_loss.patch_center, 0.9 * patch_centre + 0.1 * patches.mean(0, keepdim=True),
                          atol=1e-6)


def test_the_patch_head_is_trained_by_the_weighted_patch_loss_only():
    model = tiny()
    loss = SelfPatchLoss(8, 8)
    student = [torch.randn(2, 9, 8, requires_grad=True)]
    teacher = [torch.randn(2, 9, 8)]
    value = loss.patch_loss(student, teacher, 0.04)
    value.backward()
    assert student[0].grad is not None and value.item() > 0
    with pytest.raises(ValueError, match="2 student crops but 1 teacher"):
        loss.patch_loss(student * 2, teacher, 0.04)
    model.zero_grad()
    model.loss_weight = 0.0
    model(crops(), values()).loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.student.p_head.parameters())
    model.zero_grad()
    model.loss_weight = 0.1
    model(crops(), values()).loss.backward()
    assert model.student.p_head.mlp[0].weight.grad.abs().max() > 0


def test_teacher_ema_and_both_last_layers_frozen_in_the_first_epoch():
    model = tiny()
    student_before = {n: p.clone() for n, p in model.student.named_parameters()}
    teacher_before = [p.clone() for p in model.teacher.parameters()]
    step(model, values(momentum=0.9, frozen=True), crops())
    for name, p in model.student.named_parameters():
        changed = not torch.equal(p, student_before[name])
        assert changed == (".last_layer." not in name and p.requires_grad), name
    for t0, s1, t1 in zip(teacher_before, model.student.parameters(), model.teacher.parameters()):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * s1.detach(), atol=1e-7)  # the student AFTER the step
    step(model, values(frozen=False), crops())
    for head in ("c_head", "p_head"):
        assert not torch.equal(getattr(model.student, head).last_layer.weight_v,
                               student_before[f"{head}.last_layer.weight_v"])


# ---------------------------------------------------------------------------------------------- recipes, run

def test_official_recipe_and_defaults():
    cfg = parse_config(SelfPatchConfig, ["--config", "selfpatch_imagenet_vit_small"], "pretrain", "")
    official = parse_config(SelfPatchConfig, ["--config", "selfpatch_imagenet_vit_small", "--preset", "official"],
                            "pretrain", "")
    assert get_method(cfg.method) is SelfPatch
    assert (cfg.arch, cfg.img_size, cfg.patch_size, cfg.epochs, cfg.batch_size) == ("vit_small", 224, 16, 300, 1024)
    assert (cfg.global_crops_scale, cfg.local_crops_scale) == ((0.25, 1.0), (0.05, 0.25))
    assert (cfg.local_crops_number, cfg.local_crop_size, cfg.out_dim, cfg.out_dim_selfpatch) == (8, 96, 65536, 4096)
    assert (cfg.k_num, cfg.loss_weight, cfg.teacher_temp, cfg.warmup_teacher_temp) == (4, 0.1, 0.04, 0.04)
    assert (cfg.warmup_teacher_temp_epochs, cfg.student_temp, cfg.center_momentum) == (0, 0.1, 0.9)
    assert (cfg.norm_last_layer, cfg.freeze_last_layer, cfg.drop_path, cfg.clip_grad) == (True, 1, 0.1, 3.0)
    assert (cfg.base_lr, cfg.min_lr, cfg.warmup_epochs, cfg.momentum_teacher) == (5e-4, 1e-6, 10, 0.996)
    assert (cfg.weight_decay, cfg.weight_decay_end, official.amp) == (0.04, 0.4, "fp16")
    SelfPatch.check_config(cfg, 128)
    assert SelfPatchConfig().epochs == 300 and SelfPatchConfig().global_crops_scale == (0.25, 1.0)
    for name in [n for n in recipe_names("pretrain") if n.startswith("selfpatch_")]:
        recipe = parse_config(SelfPatchConfig, ["--config", name], "pretrain", "")
        SelfPatch.check_config(recipe, recipe.batch_size)


def test_bad_settings_are_one_line_errors(capsys, toy_data):
    demo = ["--config", "selfpatch_demo", "--data-path", str(toy_data), "--device", "cpu"]
    for extra, expected in ((["--k-num", "9"], "--k-num 9: it must be >= 1 and <= 8"),
                            (["--local-crop-size", "14"], "3x3 neighbourhoods need at least 3x3 patches"),
                            (["--use-bn-in-head"], "BatchNorm")):
        capsys.readouterr()
        assert main_pretrain.main(demo + extra) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
        assert expected in captured.err and "Traceback" not in captured.out + captured.err
    with pytest.raises(ValueError, match="k_num 0"):
        SelfPatch(TINY, head=HEAD, k_num=0)


def test_a_run_stopped_mid_epoch_resumes_to_the_identical_weights_and_centres(tmp_path, toy_data):
    def run(name, *extra):
        out = tmp_path / name
        assert main_pretrain.main(FLAGS + ["--data-path", str(toy_data), "--output-dir", str(out), *extra]) == 0
        return torch.load(out / "checkpoint.pth", weights_only=True)

    straight = run("straight")
    assert straight["global_step"] == 8 and straight["method"] == "selfpatch"
    assert straight["model"]["dino_loss.patch_center"].abs().sum() > 0
    stopped = run("pieces", "--stop-after-steps", "3")
    assert (stopped["epoch"], stopped["step_in_epoch"]) == (0, 3)
    resumed = run("pieces")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    # the checkpoint loads as a SelfPatch model: the teacher's ViT with its head, the DINO heads dropped
    loaded = load_weights(str(tmp_path / "straight" / "checkpoint.pth"))
    assert loaded.method == "selfpatch" and loaded.encoder == "teacher" and loaded.backbone["selfpatch_head"]
    teacher = {k[len("teacher.backbone."):]: v for k, v in straight["model"].items()
               if k.startswith("teacher.backbone.")}
    teacher.update({k[len("teacher."):]: v for k, v in straight["model"].items() if k.startswith("teacher.ca_head.")})
    assert set(loaded.state_dict) == set(teacher)
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in teacher.items())
