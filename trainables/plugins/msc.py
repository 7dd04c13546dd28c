"""MSC: Mitigating Semantic Collapse in PRVR (NeurIPS'25, ``admins97/MSC_PRVR``; spec section B).

Four parts, each switched by a setting (``msc.tcpl`` ...); at least one of tcpl, cbva, tome must be on.
The defaults are the release's (README TVR commands, ``src/Configs/tvr.py``, ``src/Datasets/data_provider.py``):

* ``tcpl`` (training only): Text Correlation Preservation, RKD (``trainables/losses/rkd.py``) of the pooled
  query vectors (``query``) toward a frozen teacher sentence feature: ``alpha_d`` * distance term +
  ``alpha_a`` * angle term over all queries of the batch (README weights 15 / 30; ``main.py`` has 10 / 20).
  ``teacher``: ``last_valid`` (the default, as released: each query's input token at its last valid
  position, CLIP's EOT sentence embedding on the release's CLIP features), ``mean`` (masked mean of the
  query's input tokens), ``first`` (first token) or ``external`` (the dataset's own sentence feature,
  ``batch["sentence_feat"]``). On RoBERTa-like token sequences the last valid token is an ordinary (or,
  after truncation to 30 tokens, a cut-off) token rather than a trained sentence summary; ``mean`` is the
  usual frozen sentence feature there (spec B.1 porting note). With one token per query (AMDNet's CLIP
  sentence vectors) all four agree.
* ``cbva`` (training only): Cross-Branch Video Alignment (``trainables/losses/cbva.py``): frame tokens and
  clip tokens through one shared Linear(H, H) (the release's ``vproj_clip``), intra-video contrast of each
  frame with its clip and of each clip with its frames, weight ``cbva_weight`` (``vl_coef`` 0.1),
  temperature ``cbva_temperature`` (1: the release has none). A frame's clip is its OP-ToMe token when
  ``tome`` is on (the release), else the clip whose mean contains it under the protocol's pooling rule
  (``trainables/data/protocol.py``: 32 bins of the n valid frames, b_i = round(i n / 32); with 128 frames
  frame f -> clip f // 4).
* ``adaptive`` (training only, with cbva): per-video segment count r in {5, 8, 12, 20, 32} from the
  connectivity of the clip-branch input features (``sim_thr``; with ``tome`` these are the merged tokens,
  as released); the encoded clip tokens are merged 32 -> 20 -> 12 -> 8 -> 5 down to r by greedy bipartite
  matching before the alignment, frame labels follow. The released loss always does this, so unset
  (``None``) means on whenever cbva is on; ``false`` gives CBVA with the 32 fixed clips (spec D lists it as
  an on/off choice).
* ``tome`` (training and inference; on by default: the release always builds its clip input this way):
  OP-ToMe (``trainables/plugins/token_merging.py``) replaces the clip-branch input by 32 order-preserving
  merges of the video's 128 uniform frame means (``transform_videos``); with ``tome_proportional`` (the
  release) the clip encoder adds log(merge size) to its self-attention logits (ToMe's proportional
  attention: the backbone needs the ``clip_key_bias`` capability). As released, the merged tokens are then
  L2-normalised (``tome_normalize``; x / (||x|| + 1e-5), the protocol's rule). ``tome_input``: ``raw``
  (the default, the release's merge) merges the 128-bin means of the un-normalised frame features,
  without normalising them first; ``normalized`` (named variant) L2-normalises each 128-bin mean
  before merging, so pairs are scored by cosine whatever the dataset's normalisation. ``raw`` is the
  release's merge on every dataset: where the loader L2-normalised the frames (the MS-SL / GMMFormer
  layout, the synthetic sets) it keeps what it divided each frame by (``frame_scales``: norm + 1e-5 per
  frame, or per 128-bin mean for a video over 128 frames), and the plugin multiplies it back before the
  128-bin means and the merge (with ``pad_frames: repeat`` the scales are binned with the frames, exact
  copies as the frames are, so CBVA's frame labels come from the same merge).

The frame-branch input (``pad_frames``): ``repeat`` (the default, as released: ``data_provider.py`` builds
the frame input with ``average_to_fixed_length(frames, 128)``) replaces every video's frames by its 128
uniform bins of the valid frames, with an all-ones mask: a video of n < 128 frames repeats frames (bin i
is frame min(round(i n / 128), n - 1)), a longer one is mean-pooled; ``mask`` (the clean variant) keeps the
protocol's frames, zero-padded and masked. This changes the frame input at inference too, whatever parts
are on (the release's data pipeline).

Deviations from the release (not switchable here):

* Pair-score ties in OP-ToMe go to the lower pair (``token_merging.py``).

Backbones and the defaults (``check`` rejects a backbone lacking what a switched-on part reads, in one
line naming every part to switch off): ``gmmformer2``, ``gmmformer`` and ``mssl`` run every part as
released; ``amdnet`` (no frame tokens, no clip key bias) needs ``msc.cbva: false`` and
``msc.tome_proportional: false``; ``meanpool`` (no clip tokens) needs ``msc.cbva: false`` and
``msc.tome: false``. ``tome`` and ``adaptive`` also need ``map_size`` 32 (checked on the first batch).

Training-only parts add nothing to ``encode_videos`` / ``encode_queries`` / ``score`` (only ``tome`` and
``pad_frames`` transform the inputs); ``needs`` therefore lists no inference tensor (``inference_needs``
stays empty), so a backbone does not keep training tensors (e.g. GMMFormer's frame tokens) in its
inference encoding for this plugin, while ``check`` rejects a backbone lacking anything a switched-on part
reads, training included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from trainables.data.protocol import L2_EPS
from trainables.errors import InputError
from trainables.losses.cbva import NO_MERGE, cbva_terms, segment_counts
from trainables.losses.rkd import ANGLE_BLOCK, rkd_angle, rkd_distance
from trainables.losses.terms import MSC_CBVA, MSC_RKD_ANGLE, MSC_RKD_DISTANCE, term_in_plugin
from trainables.models.base import BackboneConfig, Dims, LossContext, Tensors, VideoInputs
from trainables.models.components import init_weights
from trainables.plugins.base import Plugin, PluginConfig, check_choice, check_range, register_plugin
from trainables.plugins.token_merging import (
    SEGMENT_LEVELS,
    TOME_SCHEDULE,
    UNIFORM_TOKENS,
    MergedTokens,
    average_to_fixed_length,
    frame_bins,
    merge_to_counts,
    op_tome,
)

if TYPE_CHECKING:
    from trainables.models.base import Backbone

TEACHERS = ("last_valid", "mean", "first", "external")
PARTS = ("tcpl", "cbva", "tome")
TOME_INPUTS = ("raw", "normalized")  # what OP-ToMe merges: the means as given (release) or L2-normalised
PAD_FRAMES = ("repeat", "mask")  # frame input: 128 uniform bins (release) or the protocol's frames, masked
#: what each feature is used for, for the rejection messages
FEATURE_ROLES = {
    "query": "pooled query vectors",
    "clip_tokens": "encoded clip tokens",
    "frame_tokens": "encoded frame tokens, the frame side of the cross-branch alignment",
    "clip_key_bias": "an attention key bias in the clip encoder, for proportional attention over merged tokens",
}


@dataclass(frozen=True)
class MSCConfig(PluginConfig):
    """MSC's settings; defaults are the release's TVR settings (README command, ``data_provider.py``; see the
    module docstring)."""

    tcpl: bool = True
    alpha_d: float = 15.0
    alpha_a: float = 30.0
    teacher: str = "last_valid"
    #: largest block of the O(N^3) angle tensor materialised at once, in floats (memory knob, same value)
    angle_block: int = ANGLE_BLOCK
    cbva: bool = True
    cbva_weight: float = 0.1
    cbva_temperature: float = 1.0
    #: None = as released: on whenever cbva is on
    adaptive: bool | None = None
    sim_thr: float = 0.8
    tome: bool = True
    tome_proportional: bool = True
    tome_normalize: bool = True
    #: what OP-ToMe merges: "raw" 128-bin means as given (release), "normalized" L2-normalised first
    tome_input: str = "raw"
    #: frame input: "repeat" 128 uniform bins, all valid (release), "mask" the protocol's frames, padded and masked
    pad_frames: str = "repeat"

    def validate(self) -> None:
        for key in ("tcpl", "cbva", "adaptive", "tome", "tome_proportional", "tome_normalize"):
            if not isinstance(getattr(self, key), bool) and not (key == "adaptive" and self.adaptive is None):
                raise InputError(f"{key} must be true or false, got {getattr(self, key)!r}")
        check_range(self, "alpha_d", 0.0)
        check_range(self, "alpha_a", 0.0)
        check_choice(self, "teacher", TEACHERS)
        check_choice(self, "tome_input", TOME_INPUTS)
        check_choice(self, "pad_frames", PAD_FRAMES)
        check_range(self, "angle_block", 1)
        check_range(self, "cbva_weight", 0.0)
        check_range(self, "cbva_temperature", 0.0, low_open=True)
        check_range(self, "sim_thr", -1.0, 1.0)
        if not any(getattr(self, part) for part in PARTS):
            raise InputError("at least one of msc.tcpl, msc.cbva, msc.tome must be on")
        if self.adaptive and not self.cbva:
            raise InputError("adaptive (the adaptive segment count of CBVA) needs cbva on")

    @property
    def adaptive_on(self) -> bool:
        """Whether CBVA merges segments adaptively (unset: as released, whenever cbva is on)."""
        return self.cbva if self.adaptive is None else self.adaptive


@register_plugin("msc")
class MSC(Plugin):
    """TCPL + CBVA (+ adaptive segments) losses and OP-ToMe clip inputs (see the module docstring)."""

    Config = MSCConfig
    config: MSCConfig

    def __init__(self, config: MSCConfig, backbone: BackboneConfig, dims: Dims) -> None:
        super().__init__(config, backbone, dims)
        h = backbone.hidden_size
        #: the shared frame / clip projection of CBVA (the release's ``vproj_clip``)
        self.projection = nn.Linear(h, h) if config.cbva else None
        init_weights(self)

    # what the parts read ---------------------------------------------------------------------------------
    @staticmethod
    def part_needs(config: MSCConfig) -> dict[str, frozenset[str]]:
        """Features each switched-on part reads (training and inference)."""
        parts: dict[str, frozenset[str]] = {}
        if config.tcpl:
            parts["tcpl"] = frozenset({"query"})
        if config.cbva:
            parts["cbva"] = frozenset({"clip_tokens", "frame_tokens"})
        if config.tome:
            parts["tome"] = frozenset({"clip_tokens"} | ({"clip_key_bias"} if config.tome_proportional else set()))
        return parts

    @classmethod
    def needs(cls, config: MSCConfig) -> frozenset[str]:  # type: ignore[override]
        """Everything the switched-on parts read (``inference_needs`` stays empty: OP-ToMe only transforms
        the inputs, and the other parts are training-only)."""
        return frozenset().union(*cls.part_needs(config).values())

    @classmethod
    def check(cls, config: MSCConfig, backbone: type[Backbone]) -> None:  # type: ignore[override]
        """Reject a backbone lacking a feature some switched-on part reads, in one line naming every such
        part, what it misses and the settings that switch it off."""
        lacks, fixes = [], []
        for part, needed in cls.part_needs(config).items():
            missing = sorted(needed - backbone.features)
            if not missing:
                continue
            what = " and ".join(f"{feature} ({FEATURE_ROLES.get(feature, feature)})" for feature in missing)
            lacks.append(f"msc.{part} needs {what}")
            fixes.append("msc.tome_proportional: false" if missing == ["clip_key_bias"] else f"msc.{part}: false")
        if lacks:
            raise InputError(f"plugin msc cannot run on backbone {backbone.name}: {'; '.join(lacks)}, "
                             f"which {backbone.name} does not have ({backbone.name} provides: "
                             f"{', '.join(sorted(backbone.features))}); set {' and '.join(fixes)}")

    # inference (and training) input transform ----------------------------------------------------------
    def transform_videos(self, inputs: VideoInputs) -> VideoInputs:
        """OP-ToMe (``tome``): the clip input (B, 32, D) becomes 32 merged frame tokens (+ log merge size as
        attention key bias (B, 32)); ``pad_frames: repeat``: the frames (B, L, D) become the 128 uniform bins
        (B, 128, D) of each video's valid frames, with an all-ones mask."""
        c = self.config
        if not c.tome and c.pad_frames != "repeat":
            return inputs
        clips, frames, mask, bias = inputs.clips, inputs.frames, inputs.frames_mask, inputs.clip_key_bias
        scales = inputs.frame_scales
        if c.tome:
            if clips.shape[1] != TOME_SCHEDULE[-1]:
                raise InputError(f"msc.tome merges frames into {TOME_SCHEDULE[-1]} clip tokens, but the backbone's "
                                 f"clip input has {clips.shape[1]} (map_size must be {TOME_SCHEDULE[-1]})")
            merged = self._merge(frames, mask, scales)
            tokens = merged.tokens
            if c.tome_normalize:
                tokens = tokens / (tokens.norm(dim=-1, keepdim=True) + L2_EPS)
            clips = tokens.to(clips.dtype)
            if c.tome_proportional:
                log_sizes = merged.sizes.log()
                bias = log_sizes if bias is None else bias + log_sizes
        if c.pad_frames == "repeat":
            wide = torch.promote_types(frames.dtype, torch.float32)  # exact copies of the frames of a short video
            with torch.no_grad(), torch.autocast(frames.device.type, enabled=False):
                frames = average_to_fixed_length(frames.to(wide), mask.to(wide), UNIFORM_TOKENS).to(frames.dtype)
            if scales is not None:  # the same bins of the scales: exact copies too (<= 128 frames a video)
                with torch.no_grad(), torch.autocast(frames.device.type, enabled=False):
                    scales = average_to_fixed_length(scales.float().unsqueeze(-1), mask.to(torch.float32),
                                                     UNIFORM_TOKENS)[..., 0]
            mask = mask.new_ones(mask.shape[0], UNIFORM_TOKENS)
        return VideoInputs(clips, frames, mask, bias, scales)

    def _merge(self, frames: torch.Tensor, frames_mask: torch.Tensor,
               frame_scales: torch.Tensor | None) -> MergedTokens:
        """OP-ToMe of ``frames`` (B, L, D) in float32 without gradients, on the ``tome_input`` features:
        ``raw`` restores the un-normalised frames first when the loader normalised them (``frame_scales``
        (B, L)), so the 128-bin means and the merge are the release's."""
        with torch.no_grad(), torch.autocast(frames.device.type, enabled=False):
            features = frames.float()
            if self.config.tome_input == "raw" and frame_scales is not None:
                features = features * frame_scales.float().unsqueeze(-1)
            return op_tome(features, frames_mask.float(), normalize=self.config.tome_input == "normalized")

    # training losses -----------------------------------------------------------------------------------
    def losses(self, features: Tensors, batch: Tensors, context: LossContext) -> Tensors:
        """Weighted ``rkd_distance``, ``rkd_angle`` (tcpl) and ``cbva`` terms, in float32 even under autocast
        (RKD compares small differences of normalised distances and angles)."""
        with torch.autocast(batch["text_feat"].device.type, enabled=False):
            return self._losses(features, batch)

    def _losses(self, features: Tensors, batch: Tensors) -> Tensors:
        c = self.config
        terms: Tensors = {}
        if c.tcpl:
            student, teacher = features["query"], self.teacher(batch)
            if teacher.shape[0] != student.shape[0]:
                raise InputError(f"msc: {teacher.shape[0]} teacher sentence features for {student.shape[0]} queries")
            terms[term_in_plugin(MSC_RKD_DISTANCE)] = c.alpha_d * rkd_distance(student, teacher)
            terms[term_in_plugin(MSC_RKD_ANGLE)] = c.alpha_a * rkd_angle(student, teacher, c.angle_block)
        if c.cbva:
            terms[term_in_plugin(MSC_CBVA)] = c.cbva_weight * self.cbva(features, batch)
        return terms

    def teacher(self, batch: Tensors) -> torch.Tensor:
        """(Nq, D) frozen sentence feature of each query, by the ``teacher`` setting."""
        tokens, mask = batch["text_feat"].float(), batch["text_mask"].float()
        choice = self.config.teacher
        if choice == "external":
            if "sentence_feat" not in batch:
                raise InputError("msc.teacher=external needs the dataset's sentence features (batch['sentence_feat']), "
                                 "but this dataset has none (no sentence_dim in its manifest); use msc.teacher: "
                                 "last_valid, mean or first")
            return batch["sentence_feat"].float()
        if choice == "first":
            return tokens[:, 0]
        if choice == "mean":
            return (tokens * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        last = (mask.sum(dim=1).long() - 1).clamp(min=0)
        return tokens[torch.arange(len(tokens), device=tokens.device), last]

    def cbva(self, features: Tensors, batch: Tensors) -> torch.Tensor:
        """Unweighted L_CBVA of a training batch (segments merged per video when ``adaptive``); ``batch``
        holds the transformed inputs (``Backbone.training_losses``), so its clip features are the merged
        tokens when ``tome`` is on (the release's raw features for the segment counts and merges)."""
        assert self.projection is not None
        frame_mask = features["frame_mask"]
        frames = self.projection(features["frame_tokens"].float())
        clips = self.projection(features["clip_tokens"].float())
        lengths = frame_mask.sum(dim=1).round().long().clamp(min=1)
        num_clips, length = clips.shape[1], frames.shape[1]
        if self.config.tome:
            merged = self._merge(batch["frame_video_features"], batch["videos_mask"], batch.get("frame_scales"))
            labels = merged.labels.gather(1, frame_bins(lengths, UNIFORM_TOKENS, length))
            sizes = merged.sizes
        else:
            labels = frame_bins(lengths, num_clips, length)
            sizes = clips.new_ones(clips.shape[:2], dtype=torch.float32)
        segment_mask = torch.ones(clips.shape[:2], dtype=torch.bool, device=clips.device)
        if self.config.adaptive_on:
            if num_clips != NO_MERGE:
                raise InputError(f"msc.adaptive merges {SEGMENT_LEVELS} clip tokens, but the backbone has "
                                 f"{num_clips} (map_size must be {NO_MERGE})")
            raw = batch["clip_video_features"]
            counts = segment_counts(raw, self.config.sim_thr)
            clips, segment_mask, groups = merge_to_counts(clips, raw.float(), sizes, counts)
            labels = groups.gather(1, labels)
        f2c, c2f = cbva_terms(frames, frame_mask, clips, segment_mask, labels, self.config.cbva_temperature)
        return (f2c + c2f).mean()


__all__ = ["MSC", "MSCConfig", "TEACHERS"]
