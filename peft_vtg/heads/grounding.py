"""The grounding head: light cross-modal fusion over per-frame video features, then per-frame span logits.

Span prediction follows VSLNet-style grounding (Zhang et al., 2020): each frame gets a start logit, an end logit and,
optionally, an "inside the moment" logit; the moment is decoded from the start/end distributions (see `decoding.py`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


def sinusoidal_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed sine/cosine position table, shape (length, dim); fixed so that any number of frames works."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)  # (length, 1)
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table.to(dtype)


class Attention(nn.Module):
    """Multi-head attention over a key padding mask, on `scaled_dot_product_attention`.

    Not `nn.MultiheadAttention`: its inference fast path switches on when no parameter needs gradients, so a frozen
    (loaded) adapter would compute slightly different logits from the same adapter while training.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = dropout

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        """query (batch, q_len, hidden), key_value (batch, kv_len, hidden), key_padding (batch, kv_len) bool, True =
        padding. Returns (batch, q_len, hidden)."""
        batch, q_len, hidden = query.shape
        head_dim = hidden // self.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (batch, len, hidden) -> (batch, heads, len, head_dim)
            return x.view(batch, -1, self.num_heads, head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(query)), split(self.k_proj(key_value)), split(self.v_proj(key_value))
        allowed = ~key_padding[:, None, None, :]  # (batch, 1, 1, kv_len), broadcast over heads and queries
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )  # (batch, heads, q_len, head_dim)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, q_len, hidden))


class FusionLayer(nn.Module):
    """Pre-norm block: self-attention over [CLS; frames], cross-attention from frames to text tokens, feed-forward."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(hidden_size)
        self.self_attn = Attention(hidden_size, num_heads, dropout)
        self.cross_attn_norm = nn.LayerNorm(hidden_size)
        self.cross_attn = Attention(hidden_size, num_heads, dropout)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * hidden_size, hidden_size)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, video: torch.Tensor, video_padding: torch.Tensor, text: torch.Tensor, text_padding: torch.Tensor
    ) -> torch.Tensor:
        """video (batch, 1 + frames, hidden), text (batch, length, hidden); paddings are bool, True = padding."""
        x = self.self_attn_norm(video)
        video = video + self.dropout(self.self_attn(x, x, video_padding))
        x = self.cross_attn_norm(video)
        video = video + self.dropout(self.cross_attn(x, text, text_padding))
        return video + self.dropout(self.ffn(self.ffn_norm(video)))


class GroundingHead(nn.Module):
    """Fuses per-frame video features with text token features and predicts per-frame span logits.

    Args:
        video_dim: width of the encoder's per-frame features.
        text_dim: width of the encoder's text token features.
        hidden_size: width of the fusion layers.
        num_layers: number of fusion layers.
        num_heads: attention heads per fusion layer.
        dropout: dropout in the fusion layers.
        predict_inside: also predict a per-frame "inside the moment" logit.
        temporal_kernel_size: width, in frames, of a depthwise temporal convolution added (residually) to the
            projected frame features before fusion; 0 disables it. It hands the fusion layers local frame-to-frame
            differences, i.e. motion, which attention over frame features learns only slowly.
        hadamard_fusion: also multiply every frame's features elementwise with an attention-pooled sentence vector
            before fusion (the Hadamard fusion of 2D-TAN and its successors): "how much does this frame show what
            the sentence says" is then one linear read-out instead of a product that attention and FFNs approximate
            slowly.
        predict_saliency: also predict a per-frame saliency logit (highlight detection, QVHighlights), read from the
            fused frames by its own linear layer and trained with `saliency_loss`.
        video_layers: how many of the encoder's last layers' per-frame features the head reads (the input is then
            (batch, frames, layers, video_dim)). Each layer is layer-normed and the layers are averaged with softmax
            weights from a learned bias plus a linear read of the mean query token, so each query can lean on the
            layer that suits it (R2-Tuning, Liu et al. 2024, refines frozen CLIP's last layers for grounding). The
            read starts at zero: a new head begins with equal weights.
    """

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        hidden_size: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.1,
        predict_inside: bool = True,
        temporal_kernel_size: int = 0,
        hadamard_fusion: bool = False,
        video_layers: int = 1,
        predict_saliency: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(video_layers, bool) or not isinstance(video_layers, int) or video_layers < 1:
            raise ValueError(f"video_layers must be a whole number >= 1, got {video_layers!r}.")
        self.video_layers = video_layers
        if video_layers > 1:
            # One norm per layer: a ViT's feature scale grows with depth, and an unnormalised average would be the
            # last layer's alone.
            self.layer_norms = nn.ModuleList(nn.LayerNorm(video_dim) for _ in range(video_layers))
            self.layer_bias = nn.Parameter(torch.zeros(video_layers))
            self.layer_query = nn.Linear(hidden_size, video_layers)
            nn.init.zeros_(self.layer_query.weight)
            nn.init.zeros_(self.layer_query.bias)
        self.video_proj = nn.Sequential(nn.LayerNorm(video_dim), nn.Linear(video_dim, hidden_size))
        if temporal_kernel_size:
            if temporal_kernel_size % 2 == 0:
                raise ValueError(f"temporal_kernel_size must be odd (centred on the frame), got {temporal_kernel_size}.")
            self.temporal_conv = nn.Conv1d(hidden_size, hidden_size, temporal_kernel_size,
                                           padding=temporal_kernel_size // 2, groups=hidden_size)
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden_size))
        if hadamard_fusion:
            self.sentence_query = nn.Parameter(torch.randn(1, 1, hidden_size) * 0.02)
            self.sentence_pool = Attention(hidden_size, num_heads, dropout)
            self.hadamard_proj = nn.Linear(hidden_size, hidden_size)
        # A learned [CLS] slot ahead of the frames: its fused state summarises the pair for the matching heads.
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden_size) * 0.02)
        self.fusion = nn.ModuleList(FusionLayer(hidden_size, num_heads, dropout) for _ in range(num_layers))
        self.output_norm = nn.LayerNorm(hidden_size)
        self.span_head = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 3 if predict_inside else 2)
        )
        self.predict_inside = predict_inside
        if predict_saliency:
            self.saliency_head = nn.Linear(hidden_size, 1)

    def fuse(
        self,
        video_features: torch.Tensor,
        frame_mask: torch.Tensor,
        text_features: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Fused sequence (batch, 1 + frames, hidden): position 0 is the fused [CLS], then one state per frame.

        Args:
            video_features: (batch, frames, video_dim), or (batch, frames, layers, video_dim) with the features of
                the encoder's last `layers` layers, earliest first (the head reads its last `video_layers` of them).
            frame_mask: (batch, frames), 1 for real frames, 0 for padding.
            text_features: (batch, length, text_dim).
            text_mask: (batch, length), 1 for real tokens, 0 for padding.
        """
        # Dtype policy: the head computes in the dtype of its own parameters and casts its inputs to it. The encoder may
        # run in bf16/fp16 while PEFT keeps adapter weights in fp32 (autocast_adapter_dtype=True), or everything may be
        # half precision (autocast_adapter_dtype=False); either way the fusion sees one dtype, and gradients flow back
        # to the encoder's dtype through the cast. Logits leave `span_logits` as fp32 and every loss is taken in fp32.
        dtype = self.cls_token.dtype
        video_features, text_features = self.read_layers(video_features).to(dtype), text_features.to(dtype)
        text = self.text_proj(text_features)  # (batch, length, hidden)
        text_padding = text_mask == 0
        if self.video_layers > 1:
            video_features = self.mix_layers(video_features, text, text_mask)  # (batch, frames, video_dim)
        batch, frames, _ = video_features.shape
        video = self.video_proj(video_features)  # (batch, frames, hidden)
        if hasattr(self, "temporal_conv"):
            # Padded frames are zeroed first, so a padded video sees the same zero border as an unpadded one.
            real = video * frame_mask.unsqueeze(-1).to(video.dtype)
            video = video + self.temporal_conv(real.transpose(1, 2)).transpose(1, 2)  # (batch, frames, hidden)
        if hasattr(self, "sentence_pool"):
            # contiguous(): an expanded (stride-0) input would make nn.Linear pick a kernel that depends on whether
            # its weight needs gradients, so a loaded (frozen) head would differ from the trained one in the last bits.
            query = self.sentence_query.expand(batch, -1, -1).to(text.dtype).contiguous()
            sentence = self.sentence_pool(query, text, text_padding)  # (batch, 1, hidden)
            video = video + self.hadamard_proj(video * sentence)  # (batch, frames, hidden)
        video = video + sinusoidal_positions(frames, video.shape[-1], video.device, video.dtype)
        video = torch.cat([self.cls_token.expand(batch, -1, -1).to(video.dtype), video], dim=1)  # (batch, 1+frames, hidden)
        video_padding = torch.cat([frame_mask.new_ones(batch, 1), frame_mask], dim=1) == 0  # (batch, 1+frames)
        for layer in self.fusion:
            video = layer(video, video_padding, text, text_padding)
        return self.output_norm(video)

    def read_layers(self, video_features: torch.Tensor) -> torch.Tensor:
        """The part of `video_features` this head reads: (batch, frames, video_dim) for a one-layer head, (batch,
        frames, video_layers, video_dim) otherwise (the last `video_layers` of a layer axis). A `ValueError` names
        the fix when the input has fewer layers than the head reads."""
        if video_features.dim() == 4:
            available = video_features.shape[2]
            if available < self.video_layers:
                raise ValueError(
                    f"This grounding head reads the features of the last {self.video_layers} video layers, but the "
                    f"input holds {available}; compute them with the adapter's model (pixel_values, or a cache of a "
                    "layer low enough, or of final features with --feature-layers)."
                )
            return video_features[:, :, -1] if self.video_layers == 1 else video_features[:, :, -self.video_layers:]
        if video_features.dim() == 3 and self.video_layers > 1:
            raise ValueError(
                f"This grounding head reads the features of the last {self.video_layers} video layers (head_video_"
                f"layers={self.video_layers}), (batch, frames, {self.video_layers}, dim), but got one layer's "
                f"features {tuple(video_features.shape)}. Pass pixel_values or cached hidden states "
                "(video_hidden_states) so the model computes every layer's features; pre-extracted features hold "
                "only the last layer's."
            )
        return video_features

    def mix_layers(self, video_features: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The per-query weighted average of the layers' normalised features.

        Args:
            video_features: (batch, frames, video_layers, video_dim).
            text: (batch, length, hidden), the projected text tokens; text_mask: (batch, length), 1 = real.

        Returns:
            (batch, frames, video_dim).
        """
        real = text_mask.unsqueeze(-1).to(text.dtype)  # (batch, length, 1)
        sentence = (text * real).sum(dim=1) / real.sum(dim=1).clamp_min(1.0)  # (batch, hidden)
        weights = torch.softmax(self.layer_bias.to(text.dtype) + self.layer_query(sentence), dim=-1)  # (batch, layers)
        normed = torch.stack([norm(video_features[:, :, index].contiguous())
                              for index, norm in enumerate(self.layer_norms)], dim=2)  # (batch, frames, layers, dim)
        return (normed * weights[:, None, :, None]).sum(dim=2)

    def span_logits(self, fused: torch.Tensor, frame_mask: torch.Tensor) -> dict[str, Optional[torch.Tensor]]:
        """Per-frame logits from the fused frames; padded frames get the dtype's lowest value (probability 0).

        Returns `start_logits`, `end_logits` and `inside_logits` (None without `predict_inside`), each (batch, frames).
        """
        # contiguous(): on a strided slice, nn.Linear takes a different kernel depending on whether its weight needs
        # gradients, which would make a loaded (frozen) head differ from the trained one in the last bits.
        logits = self.span_head(fused[:, 1:].contiguous()).float()  # (batch, frames, 2 or 3)
        padding = frame_mask == 0
        lowest = torch.finfo(logits.dtype).min
        start = logits[..., 0].masked_fill(padding, lowest)
        end = logits[..., 1].masked_fill(padding, lowest)
        inside = logits[..., 2] if self.predict_inside else None
        return {"start_logits": start, "end_logits": end, "inside_logits": inside}


    def saliency_logits(self, fused: torch.Tensor, frame_mask: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-frame saliency logits (batch, frames) in fp32, padded frames at the dtype's lowest value; None for a
        head without `predict_saliency`."""
        if not hasattr(self, "saliency_head"):
            return None
        logits = self.saliency_head(fused[:, 1:].contiguous()).squeeze(-1).float()  # (batch, frames)
        return logits.masked_fill(frame_mask == 0, torch.finfo(logits.dtype).min)


def saliency_loss(
    logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    """Margin ranking loss of highlight detection (Moment-DETR's, over every pair instead of sampled ones): for each
    row and each pair of frames with known targets where frame i is more salient than frame j (in-moment against
    out-of-moment frames, and frames of different saliency inside it), `relu(margin - (logit_i - logit_j))`, averaged
    over all such pairs of the batch.

    Args:
        logits: (batch, frames) saliency logits.
        targets: (batch, frames) saliency targets (e.g. the annotators' mean score, 0..4).
        known: (batch, frames), 1 where the target is known (real frames of labelled rows).
        margin: the logit gap a more salient frame must keep over a less salient one.

    Returns:
        A scalar; 0 (with a graph) when no row has two frames of different saliency.
    """
    known = known.bool()
    logits, targets = logits.float(), targets.float()
    more_salient = (targets.unsqueeze(2) > targets.unsqueeze(1)) & known.unsqueeze(2) & known.unsqueeze(1)
    # Padded frames hold the lowest float as logit; zero them so the differences stay finite.
    logits = logits.masked_fill(~known, 0.0)
    gaps = logits.unsqueeze(2) - logits.unsqueeze(1)  # (batch, frames, frames): logit_i - logit_j
    hinge = torch.relu(margin - gaps) * more_salient
    return hinge.sum() / more_salient.sum().clamp_min(1)


def boundary_targets(index: torch.Tensor, frame_mask: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Target distribution over frames for a start or end index, shape (batch, frames).

    `smoothing` = 0 gives one-hot targets; > 0 spreads the mass over neighbouring frames with a Gaussian of that
    standard deviation (in frames), restricted to real frames and renormalised.
    """
    batch, frames = frame_mask.shape
    positions = torch.arange(frames, device=frame_mask.device).unsqueeze(0)  # (1, frames)
    if smoothing <= 0:
        targets = (positions == index.unsqueeze(1)).float()
    else:
        distance = (positions - index.unsqueeze(1)).float() / smoothing
        targets = torch.exp(-0.5 * distance**2)
    targets = targets * frame_mask.float()
    return targets / targets.sum(dim=1, keepdim=True).clamp_min(1e-12)


def grounding_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    inside_logits: Optional[torch.Tensor],
    frame_mask: torch.Tensor,
    start_frames: torch.Tensor,
    end_frames: torch.Tensor,
    boundary_smoothing: float = 0.0,
    inside_weight: float = 1.0,
    moment_present: Optional[torch.Tensor] = None,
) -> dict[str, torch.Tensor]:
    """Span loss: cross-entropy of the start and of the end frame, plus `inside_weight` x the inside-moment BCE.

    Args:
        start_logits, end_logits, inside_logits: (batch, frames), padded frames masked.
        frame_mask: (batch, frames), 1 for real frames.
        start_frames, end_frames: (batch,) inclusive frame indices of the ground-truth moment.
        moment_present: (batch,) bool, False for a row whose clip does not hold its query's moment (a window of a
            long video elsewhere, see `peft_vtg.data.LongVideoWindowCollator`): its start/end frames are ignored, it adds
            nothing to the start/end cross-entropy (averaged over the rows that hold their moment), and every one of
            its frames gets inside target 0, which is what makes inside scores comparable across windows. None:
            every row holds its moment.

    Returns:
        `{"loss": total, "start_loss", "end_loss", "inside_loss" (when predicted)}`, all scalars.
    """
    num_real = frame_mask.sum(dim=1)  # (batch,)
    present = (torch.ones_like(num_real, dtype=torch.bool) if moment_present is None
               else moment_present.to(device=num_real.device, dtype=torch.bool))
    if present.shape != num_real.shape:
        raise ValueError(f"moment_present must hold one flag per row ({num_real.shape[0]}), got shape "
                         f"{tuple(present.shape)}.")
    # Rows without their moment carry placeholder frames; only the others' labels must lie inside the video.
    start_frames = torch.where(present, start_frames, torch.zeros_like(start_frames))
    end_frames = torch.where(present, end_frames, torch.zeros_like(end_frames))
    bad = (start_frames < 0) | (end_frames < start_frames) | (end_frames >= num_real)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"Span labels of row {row} are outside its video: start_frames={int(start_frames[row])}, "
            f"end_frames={int(end_frames[row])}, real frames={int(num_real[row])}. Compute labels with "
            "peft_vtg.timeline.seconds_to_frames on the same number of frames the video was sampled to."
        )
    losses = {}
    for name, logits, index in (("start", start_logits, start_frames), ("end", end_logits, end_frames)):
        targets = boundary_targets(index, frame_mask, boundary_smoothing)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        # Padded frames carry no target mass; zero them so -inf * 0 cannot turn into NaN.
        per_row = -(targets * log_probs.masked_fill(frame_mask == 0, 0.0)).sum(dim=1)  # (batch,)
        weights = present.float()
        # A batch of absent moments only keeps a zero with a graph, so the total stays differentiable.
        losses[f"{name}_loss"] = (per_row * weights).sum() / weights.sum().clamp_min(1.0)
    total = losses["start_loss"] + losses["end_loss"]
    if inside_logits is not None and inside_weight > 0:
        positions = torch.arange(frame_mask.shape[1], device=frame_mask.device).unsqueeze(0)
        inside = ((positions >= start_frames.unsqueeze(1)) & (positions <= end_frames.unsqueeze(1))
                  & present.unsqueeze(1)).float()
        per_frame = F.binary_cross_entropy_with_logits(inside_logits.float(), inside, reduction="none")
        mask = frame_mask.float()
        losses["inside_loss"] = (per_frame * mask).sum() / mask.sum().clamp_min(1.0)
        total = total + inside_weight * losses["inside_loss"]
    losses["loss"] = total
    return losses
