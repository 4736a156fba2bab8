"""SynthVTG: untrimmed synthetic videos of shapes doing things, with natural-language queries and their moments.

Each video is a sequence of real RGB frames (32x32) over a textured background, 32-96 frames for 30-120 s. Two to
four actors (a shape in a colour) take part; two to five events (an actor doing an action) happen one after another,
each lasting 5-60 % of the video, with idle gaps between them. Distractor actors share a shape or a colour with the
others, and the same actor does several things, so a query ("watch the crimson box as it slides left") can only be
grounded by reading colour, shape and motion together. Everything is deterministic given the seed.

A fixed set of (colour, shape, action) combinations is held out: never described in pre-training clips or in the
grounding train split, only queried in the test split (`held_out` column), to measure compositional generalisation.

Videos come in two looks (`DOMAINS`): "plain", the smooth grey backgrounds the shipped backbone was pre-trained on,
and "cluttered", busy coloured backgrounds with stronger noise, a domain shift between pre-training and grounding.
The look never changes what happens: the same seed gives the same events, moments and queries in both.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .text import ACTIONS, CAPTION_TEMPLATES, COLOURS, SHAPES, describe

FRAME_SIZE = 32
MOVE_PIXELS = 9.0
HELD_OUT_FRACTION = 0.12


def held_out_combinations(seed: int = 1234) -> frozenset[tuple[str, str, str]]:
    """The (colour, shape, action) triples reserved for testing compositional generalisation."""
    triples = sorted(itertools.product(COLOURS, SHAPES, ACTIONS))
    rng = random.Random(seed)
    return frozenset(rng.sample(triples, round(HELD_OUT_FRACTION * len(triples))))


@dataclass
class Actor:
    colour: str
    shape: str
    x: float
    y: float
    size: float
    visible: bool = True


@dataclass
class Event:
    actor: int
    action: str
    start: int  # first frame
    end: int  # last frame, inclusive


@dataclass
class SynthVideo:
    """One generated video: frames (frames, 32, 32, 3) uint8, its duration and its events."""

    vid: str
    frames: np.ndarray
    duration: float
    actors: list[Actor]
    events: list[Event] = field(default_factory=list)

    def window(self, event: Event) -> list[float]:
        """The event's moment in seconds, under the frame convention of `peft_vtg.timeline`."""
        step = self.duration / len(self.frames)
        return [event.start * step, (event.end + 1) * step]

    def triple(self, event: Event) -> tuple[str, str, str]:
        actor = self.actors[event.actor]
        return actor.colour, actor.shape, event.action


# ---------------------------------------------------------------- rendering
def _grey_texture(rng: np.random.Generator) -> np.ndarray:
    """A smooth grey texture (H, W, 3) float, different per video."""
    yy, xx = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE].astype(np.float32) / FRAME_SIZE
    texture = np.full((FRAME_SIZE, FRAME_SIZE), 110.0, np.float32)
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        texture += rng.uniform(6, 14) * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    tint = rng.uniform(-10, 10, size=3).astype(np.float32)
    return texture[..., None] + tint


def _colour_texture(rng: np.random.Generator) -> np.ndarray:
    """A busy texture (H, W, 3) float: each channel its own finer, stronger waves around its own level, so the
    background takes hues close to the actors' own colours."""
    yy, xx = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE].astype(np.float32) / FRAME_SIZE
    channels = []
    for _ in range(3):
        texture = np.full((FRAME_SIZE, FRAME_SIZE), rng.uniform(70, 180), np.float32)
        for _ in range(3):
            fx, fy, phase = rng.uniform(1.0, 5.0), rng.uniform(1.0, 5.0), rng.uniform(0, 2 * np.pi)
            texture += rng.uniform(15, 35) * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
        channels.append(texture)
    return np.stack(channels, axis=-1)


@dataclass(frozen=True)
class RenderDomain:
    """How a video looks, apart from what happens in it: its background and its per-pixel sensor noise.

    The same seed gives the same actors, events, spans and queries in every domain; only the pixels differ.
    """

    name: str
    background: Callable[[np.random.Generator], np.ndarray]  # rng -> (H, W, 3) float in 0-255 units
    noise_std: float  # std of the Gaussian noise added to every pixel of every frame, 0-255 units
    description: str


DOMAINS: dict[str, RenderDomain] = {d.name: d for d in (
    # What the shipped backbone was pre-trained on.
    RenderDomain("plain", _grey_texture, 3.0, "smooth grey backgrounds, light noise (the pre-training domain)"),
    # A domain shift at grounding time, as between a web-image encoder and indoor footage: the backbone was never
    # trained to tell actors from a coloured background, so a frozen one reads these frames worse (BENCHMARKS.md).
    RenderDomain("cluttered", _colour_texture, 10.0, "busy multi-coloured backgrounds and stronger sensor noise"),
)}


def render_domain(name: str) -> RenderDomain:
    """The `RenderDomain` called `name`, with a clear error for an unknown one."""
    if name not in DOMAINS:
        choices = "; ".join(f"{d.name!r}: {d.description}" for d in DOMAINS.values())
        raise ValueError(f"Unknown SynthVTG domain {name!r}; choose one of {choices}.")
    return DOMAINS[name]


def _mask(shape: str, x: float, y: float, size: float) -> np.ndarray:
    yy, xx = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE].astype(np.float32)
    dx, dy = xx - x, yy - y
    if shape == "square":
        return (np.abs(dx) <= size) & (np.abs(dy) <= size)
    if shape == "circle":
        return dx**2 + dy**2 <= size**2
    return (dy >= -size) & (dy <= size) & (np.abs(dx) <= (dy + size) / 2)  # triangle, apex up


def _render(domain: RenderDomain, actors: list[Actor], states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """states: (actors, frames, 4) of x, y, size, alpha -> frames (frames, H, W, 3) uint8, in `domain`'s look."""
    background = domain.background(rng)
    num_frames = states.shape[1]
    frames = np.empty((num_frames, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    for t in range(num_frames):
        image = background + rng.normal(0, domain.noise_std, size=background.shape).astype(np.float32)
        for actor, (x, y, size, alpha) in zip(actors, states[:, t]):
            if alpha <= 0:
                continue
            mask = _mask(actor.shape, x, y, size)
            image[mask] = (1 - alpha) * image[mask] + alpha * np.array(COLOURS[actor.colour], np.float32)
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


# ---------------------------------------------------------------- actors and events
def _actors(rng: random.Random, count: int) -> list[Actor]:
    """Actors with distinct (colour, shape); later ones share a shape or a colour with earlier ones on purpose."""
    actors: list[Actor] = []
    while len(actors) < count:
        if actors and rng.random() < 0.5:
            other = rng.choice(actors)
            colour, shape = (rng.choice(list(COLOURS)), other.shape) if rng.random() < 0.6 else \
                (other.colour, rng.choice(SHAPES))
        else:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        if any(a.colour == colour and a.shape == shape for a in actors):
            continue
        size = rng.uniform(3.0, 4.5)
        margin = size + 2
        actors.append(Actor(colour, shape, rng.uniform(margin + 2, FRAME_SIZE - margin - 2),
                            rng.uniform(margin + 2, FRAME_SIZE - margin - 2), size))
    return actors


def _possible(action: str, actor: Actor, first: bool, last: bool) -> bool:
    """Whether `actor` can do `action` now without leaving the frame or contradicting its visibility."""
    if action == "appear":
        return first
    if action == "vanish":
        return last
    if action == "move_left":
        return actor.x - MOVE_PIXELS > actor.size + 1
    if action == "move_right":
        return actor.x + MOVE_PIXELS < FRAME_SIZE - actor.size - 1
    if action == "move_up":
        return actor.y - MOVE_PIXELS > actor.size + 1
    if action == "move_down":
        return actor.y + MOVE_PIXELS < FRAME_SIZE - actor.size - 1
    if action == "grow":
        return actor.size < 5.5
    if action == "shrink":
        return actor.size > 2.5
    return True  # blink


def _spans(rng: random.Random, num_events: int, num_frames: int) -> list[tuple[int, int]]:
    """Non-overlapping (start, end) frame spans of 5-60 % of the video each, in time order, with idle gaps."""
    lengths = [rng.uniform(0.05, 0.6) for _ in range(num_events)]
    total = sum(lengths)
    if total > 0.85:
        lengths = [max(0.05, length * 0.85 / total) for length in lengths]
    gaps = [rng.random() + 0.05 for _ in range(num_events + 1)]
    free = max(0.0, 1.0 - sum(lengths))
    gaps = [free * g / sum(gaps) for g in gaps]
    spans, cursor = [], 0.0
    for length, gap in zip(lengths, gaps):
        cursor += gap
        start = min(int(round(cursor * num_frames)), num_frames - 1)
        end = min(max(start, int(round((cursor + length) * num_frames)) - 1), num_frames - 1)
        if spans and start <= spans[-1][1]:
            start = spans[-1][1] + 1
        if start > num_frames - 1:
            break
        spans.append((start, max(start, end)))
        cursor += length
    return spans


def _simulate(actors: list[Actor], events: list[Event], num_frames: int) -> np.ndarray:
    """Per-frame (x, y, size, alpha) of every actor, shape (actors, frames, 4)."""
    states = np.zeros((len(actors), num_frames, 4), np.float32)
    by_actor: dict[int, list[Event]] = {}
    for event in events:
        by_actor.setdefault(event.actor, []).append(event)
    for index, actor in enumerate(actors):
        x, y, size = actor.x, actor.y, actor.size
        mine = sorted(by_actor.get(index, []), key=lambda e: e.start)
        alpha = 0.0 if mine and mine[0].action == "appear" else 1.0
        t = 0
        for event in mine + [None]:
            stop = event.start if event else num_frames
            states[index, t:stop] = (x, y, size, alpha)  # idle: hold the state
            if event is None:
                break
            length = event.end - event.start + 1
            for k in range(length):
                p = (k + 1) / length
                fx, fy, fs, fa = x, y, size, alpha
                if event.action == "move_left":
                    fx = x - MOVE_PIXELS * p
                elif event.action == "move_right":
                    fx = x + MOVE_PIXELS * p
                elif event.action == "move_up":
                    fy = y - MOVE_PIXELS * p
                elif event.action == "move_down":
                    fy = y + MOVE_PIXELS * p
                elif event.action == "grow":
                    fs = size * (1 + 0.6 * p)
                elif event.action == "shrink":
                    fs = size * (1 - 0.45 * p)
                elif event.action == "blink":
                    fa = 0.0 if k % 2 == 0 else 1.0
                elif event.action == "appear":
                    fa = p
                elif event.action == "vanish":
                    fa = 1.0 - p
                states[index, event.start + k] = (fx, fy, fs, fa)
            x, y, size, alpha = states[index, event.end]
            if event.action == "blink":
                alpha = 1.0
            t = event.end + 1
    return states


def generate_video(vid: str, seed: int, excluded: frozenset = frozenset(),
                   num_frames: Optional[int] = None, domain: str = "plain") -> SynthVideo:
    """One untrimmed video with 2-5 sequential events whose (colour, shape, action) triples are unique in it.

    `excluded` triples are never used for an event. `num_frames` fixes the frame count (default: 32-96). `domain`
    (a key of `DOMAINS`) only changes how the frames look, never what happens in them.
    """
    look = render_domain(domain)
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    num_frames = num_frames or rng.randint(32, 96)
    duration = rng.uniform(30.0, 120.0)
    actors = _actors(rng, rng.randint(2, 4))
    spans = _spans(rng, rng.randint(2, 5), num_frames)
    # Plan the events in time order, tracking each actor's state so that moves stay inside the frame.
    state = [Actor(a.colour, a.shape, a.x, a.y, a.size) for a in actors]
    used: set[tuple[int, str]] = set()
    events: list[Event] = []
    for number, (start, end) in enumerate(spans):
        options = []
        for index, actor in enumerate(state):
            acted = any(e.actor == index for e in events)
            for action in ACTIONS:
                if (index, action) in used or (actor.colour, actor.shape, action) in excluded:
                    continue
                gone = any(e.actor == index and e.action == "vanish" for e in events)
                if gone or not _possible(action, actor, first=not acted, last=True):
                    continue
                options.append((index, action))
        if not options:
            continue
        index, action = rng.choice(options)
        used.add((index, action))
        events.append(Event(index, action, start, end))
        actor = state[index]
        actor.x += {"move_left": -MOVE_PIXELS, "move_right": MOVE_PIXELS}.get(action, 0.0)
        actor.y += {"move_up": -MOVE_PIXELS, "move_down": MOVE_PIXELS}.get(action, 0.0)
        actor.size *= {"grow": 1.6, "shrink": 0.55}.get(action, 1.0)
    states = _simulate(actors, events, num_frames)
    frames = _render(look, actors, states, np_rng)
    return SynthVideo(vid, frames, duration, actors, events)


def generate_clip(
    seed: int, excluded: frozenset = frozenset(), num_frames: int = 16, domain: str = "plain"
) -> tuple[np.ndarray, str, tuple[str, str, str]]:
    """A trimmed pre-training clip: one actor does one action over most of the clip, among static distractors,
    rendered in `domain` (a key of `DOMAINS`).

    Returns frames (num_frames, 32, 32, 3) uint8, a caption, and the (colour, shape, action) it describes.
    """
    look = render_domain(domain)
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    actors = _actors(rng, rng.randint(1, 3))
    while True:
        action = rng.choice(ACTIONS)
        if (actors[0].colour, actors[0].shape, action) not in excluded and _possible(action, actors[0], True, True):
            break
    start = rng.randint(0, 2)
    end = num_frames - 1 - rng.randint(0, 2)
    states = _simulate(actors, [Event(0, action, start, end)], num_frames)
    frames = _render(look, actors, states, np_rng)
    triple = (actors[0].colour, actors[0].shape, action)
    return frames, describe(*triple, rng, CAPTION_TEMPLATES), triple


def render_object(rng: random.Random, noise: np.random.Generator, domain: str = "plain",
                  sizes: tuple[float, float] = (2.5, 6.0)) -> tuple[np.ndarray, str, str, float]:
    """One frame of a single static actor: random shape, colour, half-size in `sizes` (pixels; the default spans
    SynthVTG's actors before and after they grow or shrink) and position, drawn from `rng`, rendered in `domain`'s
    look with `noise`.

    Returns the frame (32, 32, 3) uint8, its colour, its shape and its half-size: a labelled view of one object,
    with nothing else on screen that the label could refer to.
    """
    look = render_domain(domain)
    shape, colour, size = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.uniform(*sizes)
    margin = size + 2
    actor = Actor(colour, shape, rng.uniform(margin, FRAME_SIZE - margin), rng.uniform(margin, FRAME_SIZE - margin),
                  size)
    state = np.array([[[actor.x, actor.y, actor.size, 1.0]]], np.float32)  # (actors, frames, 4): x, y, size, alpha
    return _render(look, [actor], state, noise)[0], colour, shape, size


def generate_object_frame(seed: int, domain: str = "plain") -> tuple[np.ndarray, tuple[str, str]]:
    """`render_object` from `seed`: the frame (32, 32, 3) uint8 and its (colour, shape)."""
    frame, colour, shape, _ = render_object(random.Random(seed), np.random.default_rng(seed), domain)
    return frame, (colour, shape)


def render_scene(rng: random.Random, noise: np.random.Generator, domain: str = "plain",
                 sizes: tuple[float, float] = (2.5, 6.0)) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """One frame of two to four static actors placed as SynthVTG videos place them (`_actors`: later ones share a
    colour or a shape with earlier ones), each of half-size in `sizes` (pixels), drawn from `rng`, rendered in
    `domain`'s look with `noise`; no actor is more than half hidden by the ones drawn after it.

    Returns the frame (32, 32, 3) uint8 and every actor's (colour, shape): a labelled view of a scene where telling
    which colour goes with which shape takes binding the two on each actor, as a query about one of a video's actors
    does.
    """
    look = render_domain(domain)
    while True:  # drawn again until no actor is more than half hidden by later ones, so that each label is seen
        actors = _actors(rng, rng.randint(2, 4))
        for actor in actors:
            actor.size = rng.uniform(*sizes)
        masks = [_mask(a.shape, a.x, a.y, a.size) for a in actors]
        covered = [np.logical_or.reduce(masks[k + 1:]) if k + 1 < len(masks) else np.zeros_like(m)
                   for k, m in enumerate(masks)]
        if all((m & ~c).sum() >= 0.5 * m.sum() for m, c in zip(masks, covered)):
            break
    state = np.array([[[a.x, a.y, a.size, 1.0]] for a in actors], np.float32)  # (actors, frames, 4): x, y, size, alpha
    return _render(look, actors, state, noise)[0], [(a.colour, a.shape) for a in actors]


def generate_scene_frame(seed: int, domain: str = "plain") -> tuple[np.ndarray, list[tuple[str, str]]]:
    """`render_scene` from `seed`: the frame (32, 32, 3) uint8 and its actors' (colour, shape)."""
    return render_scene(random.Random(seed), np.random.default_rng(seed), domain)
