"""SpidR and DinoSR: conv front end, post-LN transformer, fp32 EMA teacher, online codebooks and prediction heads.

Module and parameter names follow the official release layout (reference §8), so an official state dict loads
into these modules key for key. `DinoSR` holds everything; `SpidR` only changes which hidden states feed the heads.

Objective (both models): the student sees the masked input, the teacher (an EMA copy of the transformer) the
clean one. Each of the teacher's last K layers is instance-normalised over time, its masked frames assigned to the
nearest codeword of that layer's codebook (an EMA of sums and counts), and a head predicts the assignment with a
cross-entropy averaged over the K codebooks and all masked frames. SpidR: student layer l predicts teacher layer l
from its own FFN output (before the residual). DinoSR: the last student layer predicts every teacher layer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from data.audio import conv_geometry, frame_count
from spidr.config import ModelConfig

# ---------------------------------------------------------------------------------------------------------------
# Building blocks


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (batch, channels, time) tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def layer_norm_gelu(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """GELU(LayerNorm over the last dim) in x's dtype (both kernels compute in fp32 inside)."""
    return F.gelu(F.layer_norm(x, x.shape[-1:], weight.to(x.dtype), bias.to(x.dtype), eps))


class ConvBlock(nn.Module):
    """Conv1d -> norm -> GELU, on (B, C, 1, T) channels-last activations.

    norm "layer": LayerNorm over channels per frame (SpidR); "group": GroupNorm with one group per channel, i.e.
    each channel normalised over time (wav2vec 2.0 / HuBERT base, first layer only); None: no norm.
    Activations stay in (B, T, C) memory, so the per-frame LayerNorm reads contiguous channels and no transpose
    copy is made. The first Conv1d (on the waveform), and on CPU every one, runs as a matmul over the input's
    (B, T, C_in * kernel) windows; on the GPU the others run as a conv2d over a height-1 channels-last image (see
    README "Performance").
    """

    # Device types where every conv is a matmul over windows when training. On CPU (one thread, base config)
    # mkldnn's channels-last conv2d backward costs about 1.4x conv1d's on the 512-channel layers, and conv1d needs
    # (B, C, T) memory (two transpose copies per layer); the windows' matmul is as fast as conv1d without them.
    # Without gradients (extraction) mkldnn's conv2d forward is the faster one: 46.5x vs 39.5x real time (1 thread).
    matmul_devices: tuple[str, ...] = ("cpu",)

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, *, bias: bool,
                 norm: str | None = "layer") -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride, bias=bias)
        self.norm = norm
        if norm == "layer":
            self.layer_norm = nn.LayerNorm(out_channels)
        elif norm == "group":
            self.layer_norm = nn.GroupNorm(out_channels, out_channels)  # official key name kept
        self.norm_gelu = layer_norm_gelu  # `compile_model` swaps in a fused kernel
        nn.init.kaiming_normal_(self.conv.weight)

    def forward(self, x: Tensor) -> Tensor:
        conv = self.conv
        if conv.in_channels == 1 or (x.device.type in self.matmul_devices and torch.is_grad_enabled()):
            # A matmul over the (B, T, C_in * kernel) windows writes (B, T, C) memory directly. On the waveform,
            # conv2d would write (B, C, 1, T), which the LayerNorm and the weight gradient then copy (the model's
            # largest activation), and cuDNN's weight gradient for one input channel is slow.
            frames = x[:, :, 0, :].transpose(1, 2)  # (B, T, C_in): a view of channels-last (or 1-channel) memory
            windows = frames.unfold(1, conv.kernel_size[0], conv.stride[0]).flatten(2)  # (C_in, kernel) order
            x = F.linear(windows, conv.weight.flatten(1), conv.bias).unsqueeze(1).permute(0, 3, 1, 2)
        else:
            x = x.contiguous(memory_format=torch.channels_last)
            x = F.conv2d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, conv.stride[0]))
        if self.norm == "layer":
            # Autocast would upcast these, the largest activations of the model, to fp32 for the LayerNorm and
            # keep GELU in fp32: four extra passes over them, in both directions. Both kernels already compute
            # in fp32 internally, so they run on the conv's dtype (only the LayerNorm's output is rounded to it).
            with torch.autocast(x.device.type, enabled=False):
                norm = self.layer_norm
                y = self.norm_gelu(x.permute(0, 2, 3, 1), norm.weight, norm.bias, norm.eps)
            return y.permute(0, 3, 1, 2)  # (B, 1, T, C) memory
        if self.norm == "group":
            x = self.layer_norm(x)
        return F.gelu(x)


class FeatureExtractor(nn.Module):
    """Waveform (B, L) -> frames (B, T, C): 7 strided convs, each followed by a norm (see ConvBlock) and GELU."""

    def __init__(self, conv_layers: Sequence[tuple[int, int, int]], *, bias: bool, mode: str = "layer_norm") -> None:
        super().__init__()
        channels = [1] + [c for c, _, _ in conv_layers]

        def norm(i: int) -> str | None:
            if mode == "layer_norm":
                return "layer"
            return "group" if i == 0 else None

        self.conv_layers = nn.ModuleList(
            ConvBlock(channels[i], c, k, s, bias=bias, norm=norm(i)) for i, (c, k, s) in enumerate(conv_layers)
        )

    def forward(self, wav: Tensor) -> Tensor:
        x = wav[:, None, None, :]
        for layer in self.conv_layers:
            x = layer(x)
        return x[:, :, 0, :].transpose(1, 2)


class FeatureProjection(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_features)
        self.projection = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.layer_norm(x))


class ConvPositionalEmbedding(nn.Module):
    """`depth` grouped convs of kernel max(3, kernel // depth), each followed by a non-affine LayerNorm and GELU.

    Padded frames are zeroed before every conv, so a padded batch gives the same values as each item alone.
    """

    def __init__(self, dim: int, kernel: int, groups: int, depth: int) -> None:
        super().__init__()
        k = max(3, kernel // depth)
        self.trim = 1 if k % 2 == 0 else 0  # an even kernel with k // 2 padding makes one frame too many
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, k, padding=k // 2, groups=groups) for _ in range(depth))
        self.layer_norm = ChannelLayerNorm(dim, elementwise_affine=False)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        x = x.transpose(1, 2)
        keep = None if valid is None else valid.unsqueeze(1).to(x.dtype)
        for conv in self.convs:
            if keep is not None:
                x = x * keep
            x = conv(x)
            if self.trim:
                x = x[..., : -self.trim]
            x = F.gelu(self.layer_norm(x))
        if keep is not None:
            x = x * keep
        return x.transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.proj(x.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, hidden)
        self.intermediate_dropout = nn.Dropout(dropout)
        self.output_dense = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.output_dense(self.intermediate_dropout(F.gelu(self.intermediate_dense(x))))


class EncoderLayer(nn.Module):
    """Post-LN wav2vec 2.0 layer; returns the new residual stream and `r`, the FFN output before the residual."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.attention = SelfAttention(d, cfg.num_heads, qkv_bias=cfg.qkv_bias, dropout=cfg.attention_dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layer_norm = nn.LayerNorm(d)
        self.feed_forward = FeedForward(d, cfg.ffn_dim, cfg.ffn_dropout)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.layer_norm(x + self.dropout(self.attention(x, attn_mask)))
        r = self.feed_forward(x)
        return self.final_layer_norm(x + self.dropout(r)), r


class Transformer(nn.Module):
    """x + PosConv(x) -> LayerNorm -> dropout -> post-LN layers (no final LayerNorm). Student and teacher."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pos_conv_embed = ConvPositionalEmbedding(
            cfg.embed_dim, cfg.pos_conv_kernel, cfg.pos_conv_groups, cfg.pos_conv_depth
        )
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layer_drop = cfg.layer_drop
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.apply(self.init_weights)

    @staticmethod
    def init_weights(module: nn.Module) -> None:
        if isinstance(module, SelfAttention):
            nn.init.xavier_uniform_(module.qkv.weight, gain=1 / math.sqrt(2))
            if module.qkv.bias is not None:
                nn.init.zeros_(module.qkv.bias)
            nn.init.xavier_uniform_(module.proj.weight)
            nn.init.zeros_(module.proj.bias)
        elif isinstance(module, nn.Linear):  # `apply` visits children first, so attention's init above wins
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(
        self, x: Tensor, valid: Tensor | None = None, *, num_layers: int | None = None, results: bool = True
    ) -> tuple[Tensor, list[Tensor]]:
        """Run the first `num_layers` layers (all by default) on (B, T, D) frames; `valid` (B, T) marks real frames.

        Returns the residual stream after the last layer run and, with `results`, every layer's pre-residual FFN
        output. LayerDrop (training only): a dropped layer leaves the stream unchanged; its FFN output is still
        computed when `results` asks for it (as the official code does), otherwise the layer is skipped.
        """
        attn_mask = None if valid is None else valid[:, None, None, :]
        x = x + self.pos_conv_embed(x, valid)
        x = self.dropout(self.layer_norm(x))
        outs: list[Tensor] = []
        for layer in self.layers[:num_layers]:
            dropped = self.training and self.layer_drop > 0 and bool(torch.rand(()) < self.layer_drop)
            if dropped and not results:
                continue
            y, r = layer(x, attn_mask)
            if not dropped:
                x = y
            if results:
                outs.append(r)
        return x, outs


class Codebook(nn.Module):
    """Online k-means codebook: `codebook` is an EMA of the sums of assigned targets, `counts` of their number."""

    def __init__(self, dim: int, size: int, decay: float) -> None:
        super().__init__()
        self.decay = decay
        init = F.instance_norm(torch.randn(1, dim, size)).squeeze(0).t().contiguous()  # each dim standardised
        self.register_buffer("codebook", init)
        self.register_buffer("counts", torch.ones(size))

    @torch.no_grad()
    def assign(self, target: Tensor) -> Tensor:
        """Index of the nearest codeword (L2) among codebook / counts, for (N, D) fp32 targets."""
        words = self.codebook / self.counts.unsqueeze(1)
        dist2 = (words * words).sum(1) - 2 * target @ words.t()  # |t|^2 is the same for every codeword
        return dist2.argmin(1)

    @torch.no_grad()
    def statistics(self, labels: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        onehot = F.one_hot(labels, self.counts.numel()).to(target.dtype)
        return onehot.sum(0), onehot.t() @ target

    @torch.no_grad()
    def update(self, count: Tensor, memory: Tensor) -> None:
        """EMA of sums and counts for every codeword that got at least one target; the others are untouched."""
        alpha = torch.where(count > 0, torch.full_like(count, self.decay), torch.ones_like(count))
        self.counts.copy_(alpha * self.counts + (1 - alpha) * count)
        self.codebook.copy_(alpha.unsqueeze(1) * self.codebook + (1 - alpha).unsqueeze(1) * memory)


class Codebooks(nn.ModuleList):
    """The K codebooks, updated once per optimiser step (or every `update_interval` steps) as one large batch would.

    Every training forward adds its targets' statistics (counts and sums) to this step's; `step()` all-reduces them
    across ranks and feeds the EMA. By default (`update_per_forward`) each forward is a step, as in the official
    code; the trainer turns that off and calls `step()` once per optimiser step, after all its micro-batches, so
    every micro-batch is assigned with the same codebook and the update sees the statistics of the whole global batch.
    """

    def __init__(self, codebooks: Iterable[Codebook], update_interval: int = 1) -> None:
        super().__init__(codebooks)
        self.update_interval = update_interval
        self.update_per_forward = True
        size, dim = self[0].codebook.shape
        # This step's local statistics, counts in [..., 0] and sums in [..., 1:] (one collective). Empty at every
        # step boundary, so never checkpointed.
        self.register_buffer("step_stats", torch.zeros(len(self), size, 1 + dim), persistent=False)
        # Statistics summed since the last update (update_interval > 1). Not in the state dict, so the official
        # layout is unchanged; the trainer's checkpoints carry them (`pending_state`) for an exact resume.
        self.register_buffer("pending_counts", torch.zeros(len(self), size), persistent=False)
        self.register_buffer("pending_sums", torch.zeros(len(self), size, dim), persistent=False)
        self.pending_steps = 0

    @torch.no_grad()
    def quantize(self, targets: list[Tensor], *, update: bool) -> list[Tensor]:
        """Assign each layer's targets; with `update`, add their statistics to this step's (see the class).

        Always in fp32, also when called under bf16 autocast (distances and sums in bf16 would move codewords).
        """
        with torch.autocast(targets[0].device.type, enabled=False):
            targets = [t.float() for t in targets]
            labels = [cb.assign(t) for cb, t in zip(self, targets, strict=True)]
            if update:
                for stats, cb, lab, t in zip(self.step_stats, self, labels, targets, strict=True):
                    count, memory = cb.statistics(lab, t)
                    stats[:, 0] += count
                    stats[:, 1:] += memory
                if self.update_per_forward:
                    self.step()
        return labels

    @torch.no_grad()
    def step(self) -> None:
        """End of an optimiser step: sum this step's statistics over ranks, then update (or keep them pending)."""
        stats = self.step_stats
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        counts, sums = stats[..., 0], stats[..., 1:]
        if self.update_interval > 1:
            self.pending_counts += counts
            self.pending_sums += sums
            self.pending_steps += 1
            stats.zero_()
            if self.pending_steps < self.update_interval:
                return
            counts, sums = self.pending_counts.clone(), self.pending_sums.clone()
            self.pending_counts.zero_()
            self.pending_sums.zero_()
            self.pending_steps = 0
        for cb, count, memory in zip(self, counts, sums, strict=True):
            cb.update(count, memory)
        stats.zero_()

    def pending_state(self) -> dict[str, Tensor] | None:
        """The statistics waiting for the next update (saved in training checkpoints); None when updating per step."""
        if self.update_interval == 1:
            return None
        return {"counts": self.pending_counts.cpu().clone(), "sums": self.pending_sums.cpu().clone(),
                "steps": torch.tensor(self.pending_steps)}

    def load_pending_state(self, state: dict[str, Tensor]) -> None:
        self.pending_counts.copy_(state["counts"])
        self.pending_sums.copy_(state["sums"])
        self.pending_steps = int(state["steps"])


def standardize(wav: Tensor) -> Tensor:
    """Zero mean, unit variance over the whole utterance (the paper's input normalisation), in fp32."""
    wav = wav.float()
    return F.layer_norm(wav, wav.shape)


def select(x: Tensor, index: Tensor) -> Tensor:
    """Rows of (B, T, D) `x` at the (B, M) frame indices, flattened to (B * M, D) (no host sync)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1])).flatten(0, 1)


# ---------------------------------------------------------------------------------------------------------------
# Models


class DinoSR(nn.Module):
    """DinoSR ("reproduced" in the SpidR paper): all codebook heads read the last student layer."""

    kind = "dinosr"

    def __init__(self, cfg: ModelConfig, *, teacher: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.feature_extractor = FeatureExtractor(cfg.conv_layers, bias=cfg.conv_bias, mode=cfg.extractor_mode)
        self.feature_projection = FeatureProjection(cfg.conv_layers[-1][0], d)
        self.projection_dropout = nn.Dropout(cfg.projection_dropout)
        self.mask_embedding = nn.Parameter(torch.empty(d).uniform_())
        self.student = Transformer(cfg)
        # A Sequential of one Linear keeps the official key layout (`heads.k.0.weight`).
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(d, cfg.codebook_size)) for _ in range(cfg.num_codebooks))
        self.codebooks = Codebooks(
            (Codebook(d, cfg.codebook_size, cfg.codebook_decay) for _ in range(cfg.num_codebooks)),
            cfg.codebook_update_interval,
        )
        self.teacher: Transformer | None = self._make_teacher() if teacher else None
        self.register_buffer("current_step", torch.zeros(1, dtype=torch.int64))
        self.hop, self.window = conv_geometry((k, s) for _, k, s in cfg.conv_layers)
        self.extractor_frozen = False
        self._ema_pairs: tuple[list[Tensor], ...] | None = None

    # -- structure --------------------------------------------------------------------------------------------

    def _make_teacher(self) -> Transformer:
        teacher = copy.deepcopy(self.student).float()
        if self.cfg.teacher_init == "reinit":  # official: fresh draws for every Linear, LayerNorms/pos-conv copied
            teacher.apply(teacher.init_weights)
        teacher.requires_grad_(False)
        return teacher.eval()

    def train(self, mode: bool = True) -> DinoSR:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @property
    def num_layers(self) -> int:
        return self.cfg.num_layers

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def codebook_layers(self) -> list[int]:
        return self.cfg.codebook_layers

    def frame_count(self, num_samples: int) -> int:
        return frame_count(num_samples, self.hop, self.window)

    def extractor_parameters(self) -> list[nn.Parameter]:
        return [*self.feature_extractor.parameters(), *self.feature_projection.parameters()]

    def freeze_extractor(self) -> None:
        """Stop training the CNN and the feature projection (the paper does it at step 200k)."""
        for p in self.extractor_parameters():
            p.requires_grad_(False)
        self.extractor_frozen = True

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """teacher <- decay * teacher + (1 - decay) * student; pos-conv and buffers are copied; skipped at 0 or 1."""
        if self.teacher is None:
            raise RuntimeError("this model was built without a teacher (inference only)")
        if not 0.0 < decay < 1.0:
            return
        if self._ema_pairs is None:  # (teacher, student) tensors, cached: `.to()` and loading update them in place
            lerp_t, lerp_s, copy_t, copy_s = [], [], [], []
            for (name, t), s in zip(self.teacher.named_parameters(), self.student.parameters(), strict=True):
                (copy_t if name.startswith("pos_conv_embed") else lerp_t).append(t)
                (copy_s if name.startswith("pos_conv_embed") else lerp_s).append(s)
            for t, s in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
                copy_t.append(t)
                copy_s.append(s)
            self._ema_pairs = (lerp_t, lerp_s, copy_t, copy_s)
        lerp_t, lerp_s, copy_t, copy_s = self._ema_pairs
        if lerp_t:
            torch._foreach_lerp_(lerp_t, [s.detach() for s in lerp_s], 1.0 - decay)
        if copy_t:
            torch._foreach_copy_(copy_t, [s.detach() for s in copy_s])

    # -- objective --------------------------------------------------------------------------------------------

    def features(self, wavs: Tensor) -> Tensor:
        return self.feature_projection(self.feature_extractor(wavs))

    def student_predictions(self, x: Tensor, index: Tensor) -> list[Tensor]:
        """Hidden states (masked frames only) that head k reads: DinoSR feeds the last layer to every head."""
        final, _ = self.student(x, results=False)
        h = select(final, index)
        return [h] * self.cfg.num_codebooks

    @torch.no_grad()
    def teacher_targets(self, feats: Tensor, index: Tensor) -> list[Tensor]:
        """Teacher's last K pre-residual FFN outputs on the clean input, instance-normalised over time, masked."""
        _, outs = self.teacher(feats)
        with torch.autocast(feats.device.type, enabled=False):
            return [
                select(F.instance_norm(r.float().transpose(1, 2)).transpose(1, 2), index)
                for r in outs[-self.cfg.num_codebooks :]
            ]

    def forward(self, wavs: Tensor, mask_index: Tensor, frames: Tensor | float | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """Training forward on standardised, unpadded (B, L) waveforms with (B, M) masked frame indices.

        Returns the loss, the only place it is normalised: the per-frame cross-entropy (averaged over the K
        codebooks) summed over the masked frames and divided by `frames` (default: this batch's masked frames, a
        per-frame mean; the trainer passes the global count over ranks and micro-batches divided by the number of
        gradient averages DDP makes). Also detached statistics: `loss_sum` (the undivided sum), `frames` (this
        batch's masked frames), per-codebook target counts and summed predicted probabilities (perplexities and
        active codewords).
        """
        feats = self.features(wavs)
        x = self.projection_dropout(feats)
        masked = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device).scatter_(1, mask_index, True)
        x = torch.where(masked.unsqueeze(-1), self.mask_embedding.to(x.dtype), x)
        hidden = self.student_predictions(x, mask_index)
        targets = self.teacher_targets(feats, mask_index)
        labels = self.codebooks.quantize(targets, update=self.training)
        logits = [head(h) for head, h in zip(self.heads, hidden, strict=True)]  # bf16 under autocast
        with torch.autocast(wavs.device.type, enabled=False):  # log-softmax and loss in fp32
            log_probs = [F.log_softmax(z.float(), dim=-1) for z in logits]
            loss_sum = sum(F.nll_loss(lp, y, reduction="sum") for lp, y in zip(log_probs, labels, strict=True))
            loss_sum = loss_sum / len(log_probs)
            loss = loss_sum / (float(mask_index.numel()) if frames is None else frames)
            with torch.no_grad():
                stats = {
                    "loss_sum": loss_sum.detach(),
                    "frames": torch.tensor(float(mask_index.numel()), device=wavs.device),
                    "target_counts": torch.stack(
                        [torch.bincount(lab, minlength=self.cfg.codebook_size).float() for lab in labels]
                    ),
                    "pred_probs": torch.stack([lp.exp().sum(0) for lp in log_probs]),
                }
        return loss, stats

    # -- inference on one zero-padded batch (units.batching plans the batches) -------------------------------

    def _check_layers(self, layers: Sequence[int], allowed: Sequence[int], what: str) -> list[int]:
        layers = [int(lay) for lay in layers]
        for lay in layers:
            if lay not in allowed:
                raise ValueError(f"layer {lay} has no {what}; available layers: {list(allowed)}")
        return layers

    def _padded_input(self, wavs: Tensor, lengths: Sequence[int] | None) -> tuple[Tensor, Tensor | None]:
        """Projected features of (B, L) standardised waveforms zero-padded past `lengths`, and the (B, T) mask of
        real frames (None when every item is full length). Padding never changes the frames of the real audio."""
        if lengths is None or min(lengths) == wavs.shape[1]:
            return self.features(wavs), None
        if self.cfg.extractor_mode == "layer_norm":
            feats = self.features(wavs)
        else:  # GroupNorm normalises each channel over time, padding included: each utterance alone
            alone = [self.features(wavs[b : b + 1, :n])[0] for b, n in enumerate(lengths)]
            feats = nn.utils.rnn.pad_sequence(alone, batch_first=True)
        frames = torch.tensor([self.frame_count(n) for n in lengths])  # on the host: no device sync
        valid = torch.arange(feats.shape[1]).unsqueeze(0) < frames.unsqueeze(1)
        return feats, valid.to(feats.device, non_blocking=True)

    def _head_inputs(self, x: Tensor, valid: Tensor | None, layers: list[int]) -> dict[int, Tensor]:
        final, _ = self.student(x, valid, results=False)
        return dict.fromkeys(layers, final)

    @torch.no_grad()
    def layer_outputs(self, wavs: Tensor, layers: Sequence[int], lengths: Sequence[int] | None = None
                      ) -> dict[int, Tensor]:
        """(B, T, D) pre-residual FFN outputs of the given 1-based layers, in eval mode.

        `wavs` (B, L) are standardised waveforms (`standardize`), zero-padded past `lengths` (samples; None: all
        full length). Item b's real frames are the first frame_count(lengths[b]); the rest is padding.
        """
        layers = self._check_layers(layers, range(1, self.num_layers + 1), "transformer output")
        x, valid = self._padded_input(wavs, lengths)
        _, outs = self.student(x, valid, num_layers=max(layers))
        return {lay: outs[lay - 1] for lay in layers}

    @torch.no_grad()
    def head_probs(self, wavs: Tensor, layers: Sequence[int], lengths: Sequence[int] | None = None
                   ) -> dict[int, Tensor]:
        """(B, T, V) fp32 probabilities of the student head of each given layer (see `codebook_layers`); inputs
        as in `layer_outputs`. Their argmax are the paper's "codebook" units."""
        layers = self._check_layers(layers, self.codebook_layers, "codebook head")
        x, valid = self._padded_input(wavs, lengths)
        hidden = self._head_inputs(x, valid, layers)
        first = self.codebook_layers[0]
        return {lay: F.softmax(self.heads[lay - first](hidden[lay]).float(), dim=-1) for lay in layers}


class SpidR(DinoSR):
    """SpidR: head k reads student layer (L - K + k)'s FFN output, predicting the teacher's same layer."""

    kind = "spidr"

    def __init__(self, cfg: ModelConfig, *, teacher: bool = True) -> None:
        super().__init__(cfg, teacher=teacher)
        # The last layer's residual stream is never used by the loss: keep its final LayerNorm out of training.
        self.student.layers[-1].final_layer_norm.requires_grad_(False)

    def student_predictions(self, x: Tensor, index: Tensor) -> list[Tensor]:
        _, outs = self.student(x)
        return [select(r, index) for r in outs[-self.cfg.num_codebooks :]]

    def _head_inputs(self, x: Tensor, valid: Tensor | None, layers: list[int]) -> dict[int, Tensor]:
        _, outs = self.student(x, valid, num_layers=max(layers))
        return {lay: outs[lay - 1] for lay in layers}


MODELS: dict[str, type[DinoSR]] = {"spidr": SpidR, "dinosr": DinoSR}


def compile_model(model: DinoSR) -> None:
    """torch.compile, in place, the student and teacher transformers and the front end's LayerNorm + GELU.

    The conv front end itself stays eager (inductor fails on its channels-last convs); fusing its LayerNorm and
    GELU into one kernel saves a read and a write of its largest activations in each direction.
    `dynamic=True` because the number of frames changes from batch to batch.
    """
    for module in (model.student, model.teacher):
        if module is not None:
            module.compile(dynamic=True)
    fused = torch.compile(layer_norm_gelu, dynamic=True)
    for block in model.feature_extractor.conv_layers:
        block.norm_gelu = fused


def build_model(
    cfg: ModelConfig | str = "base", *, kind: str = "spidr", teacher: bool = True, seed: int | None = None
) -> DinoSR:
    """A randomly initialised SpidR / DinoSR from a ModelConfig or a preset name (e.g. ``build_model("tiny")``)."""
    if isinstance(cfg, str):
        from spidr.config import preset

        cfg = preset(cfg, kind).model
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(MODELS)}")
    if seed is not None:
        torch.manual_seed(seed)
    return MODELS[kind](cfg, teacher=teacher)
