"""The shipped backbone: a small CLIP (a real transformers architecture, applied frame by frame) with a word-level
tokenizer, pre-trained by `pretrain_backbone` on SynthVTG's trimmed clips and saved inside the package.

Pre-training objective: the symmetric video-text contrastive loss of CLIP twice, once on mean-pooled frame embeddings
(what the clip shows) and once on a motion embedding, the mean projected embedding of the clip's second half minus
that of its first half (what changes: static distractors cancel out, and "moves left" differs from "moves right" only
here, since a mean over frames is blind to order), plus the two video-text matching heads (VIOLET and All-in-One
style, on a light fusion of per-frame and per-token features; the heads are discarded afterwards). The motion term is
what makes each frame's embedding carry the actors' positions, sizes and visibility, which grounding needs.
Reproduce the shipped weights with `python benchmarks/pretrain_backbone.py`.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..heads.matching import all_in_one_matching_loss, violet_matching_loss
from ..heads.task import VTGTaskHeads
from .dataset import SynthVTG, pixel_values
from .generator import FRAME_SIZE
from .text import ACTIONS, COLOURS, SHAPES, build_tokenizer

BACKBONE_DIR = Path(__file__).resolve().parents[1] / "assets" / "synthvtg-clip"


def backbone_config(tokenizer: Any, patch_size: int = 8) -> Any:
    """The backbone's `CLIPConfig`: 3-layer towers of width 64 on 32x32 frames, cut into patches of `patch_size`
    pixels (the shipped backbone: 8, a 4x4 grid)."""
    from transformers import CLIPConfig

    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1 or FRAME_SIZE % patch_size:
        raise ValueError(f"patch_size must be a positive integer that divides the frame size {FRAME_SIZE} "
                         f"(1, 2, 4, 8, 16 or 32), got {patch_size!r}.")

    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=48, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  image_size=FRAME_SIZE, patch_size=patch_size)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def load_backbone(path: Optional[os.PathLike] = None) -> tuple[Any, Any]:
    """(CLIPModel, tokenizer) of the shipped backbone (or of `path`), in eval mode."""
    from transformers import AutoTokenizer, CLIPModel

    path = Path(path or BACKBONE_DIR)
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(
            f"No backbone at {path}; reinstall peft-vtg, or make one with `python benchmarks/pretrain_backbone.py`."
        )
    return CLIPModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def motion_embedding(projected: torch.Tensor) -> torch.Tensor:
    """(batch, frames, dim) projected frame embeddings -> (batch, dim) normalised mean(second half) - mean(first half)."""
    half = projected.shape[1] // 2
    return F.normalize(projected[:, half:].mean(dim=1) - projected[:, :half].mean(dim=1), dim=-1)


def _clip_embeddings(model: Any, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Per-frame pooled features (batch, frames, dim), text token states, and the normalised projected embeddings of
    the video (mean over frames), of its motion (see `motion_embedding`) and of the text, each (batch, dim)."""
    batch, num_frames = frames.shape[:2]
    vision = model.vision_model(pixel_values=frames.flatten(0, 1))
    per_frame = vision.pooler_output.view(batch, num_frames, -1)  # (batch, frames, vision_dim)
    projected = model.visual_projection(per_frame)  # (batch, frames, dim)
    video = F.normalize(projected.mean(dim=1), dim=-1)  # (batch, dim)
    text_out = model.text_model(input_ids=input_ids, attention_mask=attention_mask)
    text = F.normalize(model.text_projection(text_out.pooler_output), dim=-1)  # (batch, dim)
    return per_frame, text_out.last_hidden_state, video, motion_embedding(projected), text


def _frame_embedding(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """(frames, 3, H, W) single frames -> (frames, dim) normalised projected embeddings."""
    return F.normalize(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1)


def _pooled_frame_feature(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """(frames, 3, H, W) single frames -> (frames, vision_dim) the vision tower's normalised pooled output, before
    the projection: what adapters on the backbone read per frame."""
    return F.normalize(model.vision_model(pixel_values=pixels).pooler_output, dim=-1)


def clip_embeddings(model: Any, tokenizer: Any, clips: list
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings of `clips` (frames, caption, triple) in eval mode, without gradients: the vision tower's per-frame
    pooled output (clips, frames, vision_dim), then the normalised mean-pooled video, its motion
    (`motion_embedding`) and the caption's text, each (clips, dim)."""
    model.eval()
    with torch.no_grad():
        text = tokenizer([c for _, c, _ in clips], padding=True, return_tensors="pt")
        per_frame, _, video, motion, caption = _clip_embeddings(
            model, torch.stack([pixel_values(f) for f, _, _ in clips]), text["input_ids"], text["attention_mask"])
    return per_frame, video, motion, caption


def backbone_retrieval(triples: list, video: torch.Tensor, motion: torch.Tensor,
                       caption: torch.Tensor) -> dict[str, float]:
    """Text-to-video retrieval among clips showing `triples` (colour, shape, action), from their `clip_embeddings`,
    by the mean-pooled video embedding and by the motion embedding: top-1 accuracy where a hit is a clip showing the
    caption's (colour, shape, action) -- clips that share it are indistinguishable by design -- and chance."""
    result = {}
    for name, embedding in (("held_in_retrieval_top1", video), ("held_in_motion_retrieval_top1", motion)):
        retrieved = (caption @ embedding.t()).argmax(dim=1).tolist()
        result[name] = sum(triples[r] == triples[i] for i, r in enumerate(retrieved)) / len(triples)
    result["held_in_retrieval_chance"] = sum(sum(t == u for u in triples) for t in triples) / len(triples) ** 2
    return result


# Which two attributes (indices into (colour, shape, action)) a hard partner shares with its clip, and how often.
HARD_NEGATIVE_KINDS = (((0, 2), 0.5), ((0, 1), 0.3), ((1, 2), 0.2))


def _hard_partners(triples: list[tuple[str, str, str]], seed: int):
    """A function: clip index -> the index of a random clip sharing two of its three attributes (the pair kind drawn
    by `HARD_NEGATIVE_KINDS`' weights), or of any clip when none does."""
    import random

    rng = random.Random(seed)
    index: dict = {}
    for i, triple in enumerate(triples):
        for kind, _ in HARD_NEGATIVE_KINDS:
            index.setdefault((kind, tuple(triple[k] for k in kind)), []).append(i)

    def partner(i: int) -> int:
        # Efraimidis-Spirakis: sorting by u ** (1 / weight) gives a weighted random order of the kinds.
        for kind, _ in sorted(HARD_NEGATIVE_KINDS, key=lambda kind: -rng.random() ** (1 / kind[1])):
            candidates = [j for j in index[(kind, tuple(triples[i][k] for k in kind))] if triples[j] != triples[i]]
            if candidates:
                return rng.choice(candidates)
        return rng.randrange(len(triples))

    return partner


# The attribute term's classes: each attribute value gets a learned prototype in the joint embedding space.
ATTRIBUTE_VALUES = {"colour": tuple(COLOURS), "shape": SHAPES, "action": ACTIONS}
ATTRIBUTE_TEMPERATURE = 10.0  # cosine * 10, as CLIP-style logits; fixed so the term cannot inflate its own scale


class AttributePrototypes(torch.nn.Module):
    """One unit vector per (attribute, value) in the backbone's joint space: an embedding (batch, dim) is classified
    per attribute by its cosine with that attribute's prototypes. Text and video share the prototypes, so what tells
    "ball" from "box" in the text embedding must be the direction that tells a circle from a square on screen."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.prototypes = torch.nn.ParameterDict({
            name: torch.nn.Parameter(torch.randn(len(values), dim) * dim ** -0.5)
            for name, values in ATTRIBUTE_VALUES.items()
        })

    def logits(self, embedding: torch.Tensor, name: str) -> torch.Tensor:
        """(batch, dim) normalised embeddings -> (batch, values of attribute `name`): the cosine with each of its
        normalised prototypes, times `ATTRIBUTE_TEMPERATURE`. `loss` and `accuracy` both classify through this, so
        a prototype whose norm drifts in training cannot shift one and not the other."""
        return embedding @ F.normalize(self.prototypes[name], dim=-1).t() * ATTRIBUTE_TEMPERATURE

    def loss(self, embedding: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the attributes in `labels` (name -> (batch,) class indices); `embedding` (batch,
        dim) normalised."""
        return torch.stack([F.cross_entropy(self.logits(embedding, name), target)
                            for name, target in labels.items()]).mean()

    def accuracy(self, embedding: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
        """Per attribute in `labels`, the fraction of rows of `embedding` (batch, dim) whose most similar prototype
        (by cosine, as `loss` classifies) is the label's."""
        return {name: self.logits(embedding, name).argmax(dim=1).eq(target).float().mean().item()
                for name, target in labels.items()}


def attribute_labels(triples: list[tuple[str, ...]], names: tuple[str, ...] = tuple(ATTRIBUTE_VALUES)
                     ) -> dict[str, torch.Tensor]:
    """Tuples of attribute values, in the order of `names` (default (colour, shape, action)) -> attribute name ->
    (len(triples),) class indices into `ATTRIBUTE_VALUES`."""
    return {name: torch.tensor([ATTRIBUTE_VALUES[name].index(triple[k]) for triple in triples])
            for k, name in enumerate(names)}


# The scene term's classes: every (colour, shape) an actor can have, 18 in all.
SCENE_PAIRS = tuple(itertools.product(COLOURS, SHAPES))


def scene_targets(labels: list[list[tuple[str, str]]]) -> torch.Tensor:
    """Each frame's actors' (colour, shape) -> (frames, len(SCENE_PAIRS)) float multi-hot: 1 where an actor of that
    (colour, shape) is on screen."""
    targets = torch.zeros(len(labels), len(SCENE_PAIRS))
    for row, actors in enumerate(labels):
        for pair in actors:
            targets[row, SCENE_PAIRS.index(tuple(pair))] = 1.0
    return targets


def scene_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """How well `logits` (frames, len(SCENE_PAIRS)) name the pairs of `targets` (the same shape, multi-hot).

    `shape`: over every actor on screen whose colour lacks some shape in the frame, the fraction whose (colour,
    shape) scores above every absent (colour, other shape) (chance about 1/3 to 1/2): which shape goes with the
    colour, not whether the colour is there.
    `exact_set`: the fraction of frames whose pairs with a positive logit are exactly their actors'.
    """
    shapes = len(SHAPES)
    by_colour = logits.view(len(logits), -1, shapes)  # (frames, colours, shapes)
    present = targets.view(len(targets), -1, shapes).bool()
    absent_best = by_colour.masked_fill(present, float("-inf")).amax(dim=-1, keepdim=True)  # (frames, colours, 1)
    judged = present & torch.isfinite(absent_best)  # a present pair with at least one absent shape of its colour
    right = (by_colour > absent_best) & judged
    return {"shape": (right.sum() / judged.sum().clamp(min=1)).item(),
            "exact_set": (logits > 0).eq(targets.bool()).all(dim=1).float().mean().item()}


def _warmup_optimizer(params: list, learning_rate: float, steps: int):
    """AdamW over `params` and a schedule that warms the learning rate up linearly over the first twentieth of
    `steps`, then holds it: the training stages before the contrastive steps."""
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 20)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))


def _optimizer_step(loss: torch.Tensor, params: list, optimizer: torch.optim.Optimizer, schedule: Any) -> None:
    """Back-propagate `loss`, clip the gradient norm of `params` at 1, step, clear the gradients, advance `schedule`."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad()
    schedule.step()


def _scene_stage(model: Any, scene_pixels: torch.Tensor, scene_pairs: torch.Tensor, steps: int, batch_size: int,
                 learning_rate: float, generator: torch.Generator, distill_frames: Optional[torch.Tensor] = None,
                 distill_targets: Optional[torch.Tensor] = None, distill_weight: float = 0.0
                 ) -> tuple[torch.nn.Linear, dict[str, float]]:
    """Train `model`'s vision tower for `steps` steps to name every (colour, shape) on scene frames `scene_pixels`
    (scenes, 3, 32, 32) from its pooled output: a linear head, one binary cross-entropy per pair of `scene_pairs`
    (scenes, len(SCENE_PAIRS)) multi-hot. With `distill_weight` > 0, each step also holds the pooled output of
    `batch_size` frames drawn from `distill_frames` (frames, 3, 32, 32) near `distill_targets` (frames, vision_dim),
    the starting backbone's (`_distillation_loss`).

    Returns the trained head (for the held-out check; discarded with the other training aids) and the last step's
    losses.
    """
    tower = model.vision_model
    scene_head = torch.nn.Linear(model.config.vision_config.hidden_size, len(SCENE_PAIRS))
    params = list(tower.parameters()) + list(scene_head.parameters())
    optimizer, schedule = _warmup_optimizer(params, learning_rate, steps)
    tower.train()
    logs: dict[str, float] = {}
    for _ in tqdm(range(steps), desc="scene stage"):
        rows = torch.randint(len(scene_pixels), (batch_size,), generator=generator)
        logits = scene_head(tower(pixel_values=scene_pixels[rows]).pooler_output)  # (batch, pairs)
        scene = F.binary_cross_entropy_with_logits(logits, scene_pairs[rows])
        loss = scene
        if distill_weight:
            held = torch.randint(len(distill_frames), (batch_size,), generator=generator)
            distill = _distillation_loss(tower(pixel_values=distill_frames[held]).pooler_output, distill_targets[held])
            loss = loss + distill_weight * distill
        _optimizer_step(loss, params, optimizer, schedule)
        logs = {"scene_loss": scene.item(), **({"scene_distill_loss": distill.item()} if distill_weight else {})}
    return scene_head, logs


def _object_attribute_loss(model: Any, attributes: AttributePrototypes, object_pixels: torch.Tensor,
                           object_labels: list, batch_size: int, generator: torch.Generator,
                           embed: Callable[[Any, torch.Tensor], torch.Tensor] = _frame_embedding) -> torch.Tensor:
    """The attribute term on `batch_size` object frames drawn from `object_pixels` (frames, 3, 32, 32): each names
    its (colour, shape) from `object_labels`, by its `embed(model, pixels)` (default: the projected embedding in
    the joint space)."""
    objects = torch.randint(len(object_pixels), (batch_size,), generator=generator)
    return attributes.loss(embed(model, object_pixels[objects]),  # (batch, dim)
                           attribute_labels([object_labels[i] for i in objects.tolist()], ("colour", "shape")))


def _pooled_outputs(model: Any, frames: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The vision tower's pooled output of every frame of `frames` (clips, frames, 3, H, W) -> (clips, frames,
    vision_dim), in eval mode without gradients, `chunk` frames at a time."""
    model.eval()
    flat = frames.flatten(0, 1)
    with torch.no_grad():
        pooled = torch.cat([model.vision_model(pixel_values=flat[i:i + chunk]).pooler_output
                            for i in range(0, len(flat), chunk)])
    return pooled.view(*frames.shape[:2], -1)


def _distillation_loss(per_frame: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean 1 - cosine between the student's per-frame pooled features and the starting backbone's on the same
    frames (`_pooled_outputs` before training), both (batch, frames, vision_dim)."""
    return (1 - F.cosine_similarity(per_frame, target, dim=-1)).mean()


def _check_weight(name: str, value: Any, meaning: str) -> None:
    """Raise a ValueError naming `name` unless `value` is a finite real number >= 0 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 ({meaning}), got {value!r}.")


def _attribute_warmup(model: Any, attributes: AttributePrototypes, text: Any, triples: list, object_pixels: torch.Tensor,
                      object_labels: list, steps: int, batch_size: int, learning_rate: float,
                      generator: torch.Generator) -> None:
    """Train `model` and `attributes` on the attribute term alone for `steps` steps: captions (`text`, tokenized, with
    their `triples`) name colour, shape and action; object frames (frames, 3, 32, 32) name colour and shape."""
    params = list(model.parameters()) + list(attributes.parameters())
    optimizer, schedule = _warmup_optimizer(params, learning_rate, steps)
    model.train()
    for _ in tqdm(range(steps), desc="attribute warm-up"):
        index = torch.randint(len(triples), (batch_size,), generator=generator)
        out = model.text_model(input_ids=text["input_ids"][index], attention_mask=text["attention_mask"][index])
        caption = F.normalize(model.text_projection(out.pooler_output), dim=-1)  # (batch, dim)
        loss = (attributes.loss(caption, attribute_labels([triples[i] for i in index.tolist()]))
                + _object_attribute_loss(model, attributes, object_pixels, object_labels, batch_size, generator)) / 2
        _optimizer_step(loss, params, optimizer, schedule)


def pretrain_backbone(
    output_dir: os.PathLike = BACKBONE_DIR,
    num_clips: int = 6000,
    steps: int = 1500,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    seed: int = 0,
    vtm_weight: float = 0.5,
    motion_weight: float = 1.0,
    hard_negative_fraction: float = 0.0,
    patch_size: Optional[int] = None,
    attribute_weight: float = 0.0,
    attribute_warmup_steps: int = 0,
    init_backbone: Optional[os.PathLike] = None,
    vision_attribute_weight: float = 0.0,
    event_attribute_weight: float = 0.0,
    distill_weight: float = 0.0,
    scene_steps: int = 0,
    num_scenes: int = 60_000,
) -> dict[str, float]:
    """Pre-train the backbone on SynthVTG clips and save it (config, safetensors, tokenizer) to `output_dir`.

    `hard_negative_fraction` > 0 makes that fraction of each batch hard pairs: a clip, then a partner clip whose
    (colour, shape, action) shares two of its three (`HARD_NEGATIVE_KINDS`), so that one attribute alone tells the
    pair apart; clips showing the same (colour, shape, action) are then also kept from being each other's
    negatives. 0 (the shipped backbone) draws every clip at random.

    `patch_size` is the vision tower's patch, in pixels of the 32x32 frames (default: 8, or `init_backbone`'s): the
    shipped 8 gives a 4x4 grid, about one actor per patch; 4 gives an 8x8 grid at about 2.5x the pre-training time.
    Given shape labels, a tower learns shape faster with 4 (`benchmarks/shape_learnability.py`); this contrastive
    recipe alone leaves shape near chance with either (`benchmarks/attribute_probe.py`).

    `attribute_weight` > 0 adds a term that names attributes from both towers against shared prototypes
    (`AttributePrototypes`, discarded afterwards, like the matching heads): the caption's text embedding names its
    colour, shape and action; the projected embedding of a frame of one static actor (`SynthVTG.object_frames`, one
    per clip) names its colour and shape; the clip's motion embedding names its action. The contrastive terms alone
    leave shape at chance: neither tower reads it, so neither earns a gradient for it from the other; the labels
    break that tie, and the shared prototypes put what tells "ball" from "box" in the text where the frame shows a
    circle or a square. 0 (the shipped backbone) leaves the term out. `attribute_warmup_steps` > 0 (with the term) first
    trains on the term alone for that many steps (the captions and the object frames; no clips), like a tower
    initialised from a supervised checkpoint before contrastive training.

    `init_backbone` (a directory `load_backbone` reads, e.g. `BACKBONE_DIR`) starts from that backbone's weights and
    tokenizer instead of fresh ones. `vision_attribute_weight` > 0 adds a term on the vision tower alone: each object
    frame names its colour and shape from the pooled output before the projection (what adapters read per frame),
    against prototypes of its own; the text tower is not involved. `event_attribute_weight` > 0 adds another on the
    clips: the change of the pooled output (`motion_embedding` of the per-frame pooled features, before the
    projection) names the event's colour, shape and action, so shape must be read where grounding reads, on the actor
    that acts among the frame's four, not only on a lone actor. `distill_weight` > 0 (only with `init_backbone`)
    keeps each clip frame's pooled output near the starting backbone's (1 - cosine against its output before
    training), so that what the new term teaches is added to the features grounding already uses rather than traded
    for them.

    `scene_steps` > 0 first trains the vision tower alone on `num_scenes` frames of two to four static actors placed
    as in SynthVTG videos (`SynthVTG.scene_frames`; a tenth, at most 1,000, held out for a check): a linear head on
    the pooled output (discarded afterwards) names every (colour, shape) on screen (`SCENE_PAIRS`, one binary
    cross-entropy each), with the distillation term on clip frames when `distill_weight` > 0. Where a lone actor's
    frame only asks for its shape, a scene asks which shape goes with which colour -- what tells a video holding a
    red circle from one holding a red square and a blue circle. The tower needs many scenes to learn that (with a
    few thousand it fits them and stops generalising). `steps` contrastive steps follow; 0 skips them.

    Returns a few numbers about the run (final losses, held-in retrieval accuracy, seconds).
    """
    if not 0.0 <= hard_negative_fraction <= 1.0:
        raise ValueError(f"hard_negative_fraction must be in [0, 1], got {hard_negative_fraction!r}.")
    _check_weight("attribute_weight", attribute_weight, "0 leaves the attribute term out")
    _check_weight("vision_attribute_weight", vision_attribute_weight, "0 leaves the vision attribute term out")
    _check_weight("event_attribute_weight", event_attribute_weight, "0 leaves the event attribute term out")
    _check_weight("distill_weight", distill_weight, "0 leaves the distillation term out")
    for name, value, least in (("steps", steps, 0), ("scene_steps", scene_steps, 0), ("num_scenes", num_scenes, 10)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}.")
    if distill_weight and init_backbone is None:
        raise ValueError(f"distill_weight > 0 ({distill_weight!r}) keeps the features near the starting backbone's, "
                         f"so it needs init_backbone (e.g. peft_vtg.synth.backbone.BACKBONE_DIR).")
    if isinstance(attribute_warmup_steps, bool) or not isinstance(attribute_warmup_steps, int) or \
            attribute_warmup_steps < 0 or (attribute_warmup_steps and not attribute_weight):
        raise ValueError(f"attribute_warmup_steps must be an integer >= 0, and > 0 only with attribute_weight > 0, "
                         f"got {attribute_warmup_steps!r} (attribute_weight {attribute_weight!r}).")
    from transformers import CLIPModel

    if init_backbone is not None and Path(init_backbone).resolve() == Path(output_dir).resolve():
        raise ValueError(f"output_dir {str(output_dir)!r} is init_backbone: the run would overwrite the backbone it "
                         f"starts from (by default, the shipped one); give another output_dir.")
    if init_backbone is not None:
        model, tokenizer = load_backbone(init_backbone)
        if patch_size is not None and patch_size != model.config.vision_config.patch_size:
            raise ValueError(f"patch_size {patch_size!r} differs from init_backbone's "
                             f"{model.config.vision_config.patch_size}; leave patch_size out to keep the backbone's.")
    torch.manual_seed(seed)
    started = time.time()
    if init_backbone is None:
        tokenizer = build_tokenizer()
        model = CLIPModel(backbone_config(tokenizer, 8 if patch_size is None else patch_size))
    vision_dim, text_dim = model.config.vision_config.hidden_size, model.config.text_config.hidden_size
    matching = VTGTaskHeads(vision_dim, text_dim, hidden_size=64, num_layers=1, num_heads=4, dropout=0.0,
                            vtm_heads=("violet", "all_in_one"))
    clips = SynthVTG(seed=seed).pretraining_clips(num_clips)
    held_in = clips[-256:]  # for a retrieval check; not trained on
    clips = clips[:-256]
    if attribute_weight > 0 or vision_attribute_weight > 0:
        object_frames, object_labels = SynthVTG(seed=seed).object_frames(num_clips)
        object_pixels = pixel_values(object_frames)  # (num_clips, 3, 32, 32)
        # as many objects as training clips to train on; the rest, as many as the held-in clips, for a check
        train_objects, held_objects = object_pixels[:len(clips)], object_pixels[len(clips):]
    frames = torch.stack([pixel_values(f) for f, _, _ in clips])  # (clips, 16, 3, 32, 32)
    text = tokenizer([c for _, c, _ in clips], padding=True, return_tensors="pt")
    # The starting backbone is frozen in its targets and the clips are fixed: one pass before training gives every
    # frame's target, where a frozen copy would run again on each batch.
    distill_targets = _pooled_outputs(model, frames) if distill_weight else None  # (clips, 16, vision_dim)
    attributes = AttributePrototypes(model.config.projection_dim) if attribute_weight > 0 else None
    vision_attributes = AttributePrototypes(vision_dim) if vision_attribute_weight > 0 else None
    event_attributes = AttributePrototypes(vision_dim) if event_attribute_weight > 0 else None
    params = list(model.parameters()) + list(matching.parameters())
    for prototypes in (attributes, vision_attributes, event_attributes):
        if prototypes is not None:
            params += list(prototypes.parameters())
    generator = torch.Generator().manual_seed(seed)
    triples = [triple for _, _, triple in clips]
    scene_logs: dict[str, float] = {}
    if scene_steps:
        scene_frames, scene_labels = SynthVTG(seed=seed).scene_frames(num_scenes)
        scene_pixels, scene_pairs = pixel_values(scene_frames), scene_targets(scene_labels)  # (n, 3, 32, 32), (n, 18)
        held_out = min(1000, num_scenes // 10)
        held_scenes, held_pairs = scene_pixels[-held_out:], scene_pairs[-held_out:]
        scene_head, scene_logs = _scene_stage(
            model, scene_pixels[:-held_out], scene_pairs[:-held_out], scene_steps, batch_size, learning_rate,
            generator, frames.flatten(0, 1), None if distill_targets is None else distill_targets.flatten(0, 1),
            distill_weight)
    if attribute_warmup_steps:
        _attribute_warmup(model, attributes, text, triples, train_objects,
                          object_labels, attribute_warmup_steps, batch_size, learning_rate, generator)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # max(steps, 1): LambdaLR calls this once even when steps is 0
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(steps, 1))))
    )
    partner = _hard_partners(triples, seed) if hard_negative_fraction > 0 else None
    pairs = int(batch_size * hard_negative_fraction) // 2
    model.train()
    matching.train()
    logs: dict[str, float] = {}
    for step in tqdm(range(steps), desc="pre-training backbone"):
        index = torch.randint(len(clips), (batch_size,), generator=generator)
        same = None
        if partner is not None:
            for k in range(pairs):
                index[2 * k + 1] = partner(int(index[2 * k]))
            chosen = [triples[i] for i in index.tolist()]
            same = torch.tensor([[a == b for b in chosen] for a in chosen]) & ~torch.eye(batch_size, dtype=torch.bool)
        ids, mask = text["input_ids"][index], text["attention_mask"][index]
        per_frame, tokens, video, motion, caption = _clip_embeddings(model, frames[index], ids, mask)
        targets = torch.arange(batch_size)

        def clip_loss(embedding: torch.Tensor) -> torch.Tensor:  # CLIP's symmetric cross-entropy against the captions
            logits = caption @ embedding.t() * model.logit_scale.exp()  # (batch, batch)
            if same is not None:  # another clip of the same (colour, shape, action) is not a negative
                logits = logits.masked_fill(same, float("-inf"))
            return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2

        appearance_contrastive = clip_loss(video)
        motion_contrastive = clip_loss(motion)
        contrastive = appearance_contrastive + motion_weight * motion_contrastive
        frame_mask = torch.ones(per_frame.shape[:2], dtype=torch.long)
        fuse = matching._fused_cls
        cls = fuse(per_frame, frame_mask, tokens, mask)
        # Captions repeat across clips; rows with the same caption must not serve as each other's negatives.
        captions = [str(i) for i in ids.tolist()] if partner is None else [str(triples[i]) for i in index.tolist()]
        vtm = violet_matching_loss(matching.violet_vtm, fuse, cls, per_frame, frame_mask, tokens, mask, captions,
                                   generator) + all_in_one_matching_loss(
            matching.all_in_one_vtm, fuse, cls, per_frame, frame_mask, tokens, mask, captions, generator)
        loss = contrastive + vtm_weight * vtm
        if attributes is not None:
            chosen = [triples[i] for i in index.tolist()]
            attribute = (attributes.loss(caption, attribute_labels(chosen))
                         + _object_attribute_loss(model, attributes, train_objects, object_labels, batch_size,
                                                  generator)
                         + attributes.loss(motion, attribute_labels([(t[2],) for t in chosen], ("action",)))) / 3
            loss = loss + attribute_weight * attribute
        if vision_attributes is not None:
            vision_attribute = _object_attribute_loss(model, vision_attributes, train_objects, object_labels,
                                                      batch_size, generator, embed=_pooled_frame_feature)
            loss = loss + vision_attribute_weight * vision_attribute
        if event_attributes is not None:
            event_attribute = event_attributes.loss(motion_embedding(per_frame),  # (batch, vision_dim)
                                                    attribute_labels([triples[i] for i in index.tolist()]))
            loss = loss + event_attribute_weight * event_attribute
        if distill_targets is not None:
            distill = _distillation_loss(per_frame, distill_targets[index])
            loss = loss + distill_weight * distill
        _optimizer_step(loss, params, optimizer, schedule)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        logs = {"contrastive_loss": contrastive.item(), "motion_contrastive_loss": motion_contrastive.item(),
                "vtm_loss": vtm.item()}
        if attributes is not None:
            logs["attribute_loss"] = attribute.item()
        if vision_attributes is not None:
            logs["vision_attribute_loss"] = vision_attribute.item()
        if event_attributes is not None:
            logs["event_attribute_loss"] = event_attribute.item()
        if distill_targets is not None:
            logs["distill_loss"] = distill.item()
    held_triples = [t for _, _, t in held_in]
    held_per_frame, held_video, held_motion, held_caption = clip_embeddings(model, tokenizer, held_in)
    logs.update(backbone_retrieval(held_triples, held_video, held_motion, held_caption))
    if attributes is not None:  # how well each tower names the held-in clips' attributes
        with torch.no_grad():
            held_seen = _frame_embedding(model, held_objects)
        held_labels = attribute_labels(held_triples)
        checks = (("text", held_caption, held_labels),
                  ("object_frame", held_seen, attribute_labels(object_labels[len(clips):], ("colour", "shape"))),
                  ("motion", held_motion, {"action": held_labels["action"]}))
        for where, embedding, labels in checks:
            for name, value in attributes.accuracy(embedding, labels).items():
                logs[f"held_in_{where}_{name}_accuracy"] = value
    if vision_attributes is not None:  # how well the pooled output names the held-out object frames' colour, shape
        with torch.no_grad():
            held_pooled = _pooled_frame_feature(model, held_objects)
        labels = attribute_labels(object_labels[len(clips):], ("colour", "shape"))
        for name, value in vision_attributes.accuracy(held_pooled, labels).items():
            logs[f"held_in_object_frame_pooled_{name}_accuracy"] = value
    if event_attributes is not None:  # how well the change of the held-in clips' pooled output names their event
        held_change = motion_embedding(held_per_frame)  # (clips, vision_dim)
        for name, value in event_attributes.accuracy(held_change, attribute_labels(held_triples)).items():
            logs[f"held_in_event_{name}_accuracy"] = value
    logs.update(scene_logs)
    if scene_steps:  # how well the pooled output names the held-out scenes' (colour, shape) pairs
        with torch.no_grad():
            held_logits = scene_head(_pooled_outputs(model, held_scenes[:, None])[:, 0])  # (scenes, pairs)
        for name, value in scene_accuracy(held_logits, held_pairs).items():
            logs[f"held_in_scene_{name}_accuracy"] = value
    logs["seconds"] = time.time() - started
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return logs
