"""SynthVTG's language: attribute words with synonyms, action phrases with paraphrases, sentence templates.

A query names a colour, a shape and an action; each is drawn from several synonyms / paraphrases, and the sentence
from several templates, so a model has to read the meaning, not match one fixed string.
"""

from __future__ import annotations

import random

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (40, 175, 70),
    "blue": (55, 85, 225),
    "yellow": (230, 205, 40),
    "purple": (150, 65, 195),
    "orange": (240, 135, 30),
}
SHAPES = ("square", "circle", "triangle")
ACTIONS = ("move_left", "move_right", "move_up", "move_down", "grow", "shrink", "blink", "appear", "vanish")

COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald"),
    "blue": ("blue", "azure"),
    "yellow": ("yellow", "golden"),
    "purple": ("purple", "violet"),
    "orange": ("orange", "amber"),
}
SHAPE_WORDS = {
    "square": ("square", "box", "block"),
    "circle": ("circle", "ball", "disc"),
    "triangle": ("triangle", "wedge"),
}
ACTION_PHRASES = {  # third person, present tense
    "move_left": ("moves to the left", "slides left", "goes left", "drifts to the left", "heads left"),
    "move_right": ("moves to the right", "slides right", "goes right", "drifts to the right", "heads right"),
    "move_up": ("moves up", "rises", "climbs upward", "goes up", "floats up"),
    "move_down": ("moves down", "sinks", "drops down", "goes down", "falls"),
    "grow": ("grows", "gets bigger", "expands", "becomes larger", "swells"),
    "shrink": ("shrinks", "gets smaller", "contracts", "becomes smaller"),
    "blink": ("blinks", "flickers", "flashes on and off", "keeps blinking"),
    "appear": ("appears", "shows up", "comes into view", "pops up"),
    "vanish": ("vanishes", "disappears", "fades away", "goes out of view"),
}
TEMPLATES = (
    "the {colour} {shape} {action}",
    "a {colour} {shape} {action}",
    "watch the {colour} {shape} as it {action}",
    "find the moment when the {colour} {shape} {action}",
    "when the {colour} {shape} {action}",
    "the part where a {colour} {shape} {action}",
    "{colour} {shape} {action}",
)
CAPTION_TEMPLATES = TEMPLATES[:3] + ("a clip in which the {colour} {shape} {action}",)
SPECIAL_TOKENS = ("[UNK]", "[PAD]", "[BOS]", "[EOS]")


def describe(colour: str, shape: str, action: str, rng: random.Random, templates=TEMPLATES) -> str:
    """One random phrasing of (colour, shape, action)."""
    return rng.choice(templates).format(
        colour=rng.choice(COLOUR_WORDS[colour]), shape=rng.choice(SHAPE_WORDS[shape]),
        action=rng.choice(ACTION_PHRASES[action]),
    )


def vocabulary() -> list[str]:
    """Every word any SynthVTG sentence can contain, special tokens first (PAD has id 1)."""
    words: set[str] = set()
    for group in (COLOUR_WORDS, SHAPE_WORDS, ACTION_PHRASES):
        for phrases in group.values():
            for phrase in phrases:
                words.update(phrase.split())
    for template in TEMPLATES + CAPTION_TEMPLATES:
        words.update(w for w in template.split() if not w.startswith("{"))
    return list(SPECIAL_TOKENS) + sorted(words)


def build_tokenizer():
    """A word-level `PreTrainedTokenizerFast` over `vocabulary()` that wraps text as [BOS] words [EOS].

    [EOS] gets the largest id, which CLIP-style text models with the legacy `argmax(input_ids)` pooling rely on.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [w for w in vocabulary() if w not in ("[BOS]", "[EOS]")]
    vocab = {word: index for index, word in enumerate(words)}
    vocab["[BOS]"] = len(vocab)
    vocab["[EOS]"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]", model_max_length=32)
