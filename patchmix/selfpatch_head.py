"""SelfPatch's ViT and its SelfPatch head (Yun et al., *Patch-level Representation Learning for Self-supervised
Vision Transformers*, CVPR 2022; spec section 9).

SelfPatch trains a ViT **without a CLS token** (DINO's ViT with the CLS token and the final LayerNorm removed: it
outputs all patch tokens). A small *SelfPatch head* turns a set of tokens into one vector: a learnable query
token, two CaiT-style class-attention blocks and a LayerNorm. It is used twice in training:

* over **all patch tokens of an image**: the image-level vector that SelfPatch's DINO loss trains, i.e. the
  feature that takes the place of the CLS token (:meth:`SelfPatchHead.forward`);
* **per patch**, over the ``k`` most similar patches among its 8 neighbours (teacher side): the aggregated
  positive of each patch for the patch-level loss (:meth:`SelfPatchHead.aggregate_neighbours`).

:class:`SelfPatchViT` is timm's ``VisionTransformer`` without CLS token and final norm, plus the head as
``ca_head`` (the official attribute name, so ``state_dict()`` has the official key layout: ``pos_embed``,
``patch_embed.*``, ``blocks.N.*``, ``ca_head.{cls_token, cls_blocks.N.*, norm.*}``). Its ``forward_head``
aggregates the patch tokens, so everything that reads a CLS feature
(``model.forward_head(model.forward_features(x), pre_logits=True)``: kNN, linear probe, fine-tuning) reads the
SelfPatch image vector; ``forward_features`` gives the patch tokens for the patch-level parts of training.
Build it with ``patchmix.models.build_backbone(..., selfpatch_head=True)``.

The class-attention block is written here, with timm's ``ClassAttn`` as its attention (the official
``Class_Attention`` computes the same: query from the first token, keys and values from all, separate q/k/v
projections with bias). timm's ``LayerScaleBlockClassAttn`` is not used: the official block, although named
``LayerScale_Block_CA``, has no layer scale.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from timm.models.cait import ClassAttn
from timm.models.vision_transformer import VisionTransformer

__all__ = ["ClassAttentionBlock", "SelfPatchHead", "SelfPatchViT", "neighbour_index", "select_neighbours"]


class ClassAttentionBlock(nn.Module):
    """One block of the SelfPatch head: the query token attends to ``[query, tokens]`` (pre-norm), then an MLP
    updates the query. The tokens are read, never changed. No layer scale, no drop path (as the official head).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = ClassAttn(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, tokens: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``tokens`` (B, N, D), ``query`` (B, 1, D) -> the updated query (B, 1, D)."""
        query = query + self.attn(self.norm1(torch.cat([query, tokens], dim=1)))
        return query + self.mlp(self.norm2(query))


def neighbour_index(grid: int, window: int = 3, device: torch.device | str | None = None) -> torch.Tensor:
    """For each patch of a ``grid x grid`` map (row-major), the flat indices of the other patches of its
    ``window x window`` neighbourhood, wrapping around the edges (as the official code), in increasing order:
    a (grid*grid, window*window - 1) tensor. Computed once per grid, window and device by tensor arithmetic (the
    training step asks for it at every call) and shared: do not modify it."""
    if grid < window:
        raise ValueError(f"a {grid}x{grid} patch grid is smaller than the {window}x{window} neighbourhood.")
    return _neighbour_index(grid, window, torch.device(device) if device is not None else torch.device("cpu"))


@functools.lru_cache(maxsize=32)
def _neighbour_index(grid: int, window: int, device: torch.device) -> torch.Tensor:
    reach = torch.arange(window) - window // 2
    row_step, col_step = (t.flatten() for t in torch.meshgrid(reach, reach, indexing="ij"))
    others = (row_step != 0) | (col_step != 0)                       # the window without its centre
    row_step, col_step = row_step[others], col_step[others]          # (M,)
    patch = torch.arange(grid * grid)
    rows, cols = patch.div(grid, rounding_mode="floor"), patch % grid   # (N,)
    index = ((rows[:, None] + row_step) % grid) * grid + (cols[:, None] + col_step) % grid   # (N, M), wrapped
    return index.sort(dim=1).values.to(device)


class SelfPatchHead(nn.Module):
    """SelfPatch's head: a learnable query token (``cls_token``), ``depth`` class-attention blocks
    (``cls_blocks``) and a LayerNorm (``norm``); it aggregates a set of tokens into one vector.

    Initialised as the official head (truncated normal, std 0.02, for the query token and the Linear weights;
    zero biases; LayerNorms at 1 and 0).
    """

    def __init__(self, dim: int, num_heads: int, depth: int = 2, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.embed_dim = dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_blocks = nn.ModuleList([ClassAttentionBlock(dim, num_heads, mlp_ratio, qkv_bias, norm_eps)
                                         for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _query(self, tokens: torch.Tensor) -> torch.Tensor:
        query = self.cls_token.expand(tokens.shape[0], -1, -1)
        for block in self.cls_blocks:
            query = block(tokens, query)
        return query[:, 0]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """All tokens of each image (B, N, D) -> the aggregated, normalised vector (B, D): the image-level
        vector of SelfPatch (the CLS-token output of the official head)."""
        return self.norm(self._query(tokens))

    def aggregate_neighbours(self, tokens: torch.Tensor, k: int, window: int = 3) -> torch.Tensor:
        """Per patch, the ``k`` patches of its ``window x window`` neighbourhood (without itself; wrapping
        around the grid edges) whose tokens are most cosine-similar to its own, aggregated by the same blocks and
        query token and normalised: (B, N, D) -> (B, N, D). The official teacher's patch-level targets
        (``SelfPatchHead.forward(x, loc=True)[:, 1:]``); the tokens form a square grid."""
        return self.aggregate(select_neighbours(tokens, k, window))

    def aggregate(self, groups: torch.Tensor) -> torch.Tensor:
        """Each group of tokens (B, N, k, D) aggregated into one normalised vector (B, N, D): all groups of all
        images go through the blocks as one batch."""
        batch, count, k, dim = groups.shape
        return self.norm(self._query(groups.reshape(batch * count, k, dim))).view(batch, count, dim)


def select_neighbours(tokens: torch.Tensor, k: int, window: int = 3) -> torch.Tensor:
    """SelfPatch's neighbour matching: for every patch of every image at once, the tokens of the ``k`` patches
    of its ``window x window`` neighbourhood (wrapping around the grid edges) with the highest cosine similarity
    to its own token, (B, N, D) -> (B, N, k, D); no loop over patches (one gather of all candidates, one top-k,
    one gather of the chosen). The tokens form a square grid."""
    batch, count, dim = tokens.shape
    grid = math.isqrt(count)
    if grid * grid != count:
        raise ValueError(f"{count} patch tokens do not form a square grid.")
    index = neighbour_index(grid, window, tokens.device)               # (N, M)
    unit = F.normalize(tokens, dim=-1)
    similarity = (unit[:, index] @ unit.unsqueeze(-1)).squeeze(-1)     # (B, N, M)
    top = similarity.topk(k, dim=-1).indices                          # (B, N, k), positions among the M
    return torch.gather(tokens[:, index], 2, top.unsqueeze(-1).expand(-1, -1, -1, dim))


class SelfPatchViT(VisionTransformer):
    """timm ViT without CLS token and final LayerNorm (SelfPatch's backbone) plus the SelfPatch head
    (``ca_head``) that forms the image-level feature.

    ``forward_features`` returns the patch tokens (B, N, D); ``forward_head(x, pre_logits=True)`` the SelfPatch
    image vector (B, D); ``forward`` = classifier ``head`` on that vector (``Identity`` with ``num_classes=0``).
    ``reset_classifier``, ``embed_dim``, ``no_weight_decay`` and ``group_matcher`` work as for any timm ViT (the
    head's query token has no weight decay; for layer-wise lr decay the head is grouped like a ViT's final norm,
    with the last block, as CaiT groups its class-attention blocks).
    Keyword arguments are those of timm's ``VisionTransformer``; ``head_depth`` is the number of class-attention
    blocks (2 in SelfPatch). The head's LayerNorms use the blocks' epsilon.
    """

    def __init__(self, head_depth: int = 2, **kwargs) -> None:
        kwargs.update(class_token=False, global_pool="", final_norm=False, fc_norm=False)
        super().__init__(**kwargs)
        eps = float(self.blocks[0].norm1.eps) if len(self.blocks) else 1e-6
        self.ca_head = SelfPatchHead(self.embed_dim, kwargs.get("num_heads", 12), depth=head_depth,
                                     mlp_ratio=kwargs.get("mlp_ratio", 4.0), norm_eps=eps)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.ca_head(x))
        return x if pre_logits else self.head(x)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"ca_head.cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        groups = super().group_matcher(coarse)
        groups["blocks"] = [*groups["blocks"], (r"^ca_head", (99999,))]
        return groups
