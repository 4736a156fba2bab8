"""Tiny random models of every supported architecture, built in code (no download), for the tests."""

from __future__ import annotations

import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    ResNetConfig,
    SiglipConfig,
    SiglipModel,
    TvpConfig,
    TvpForVideoGrounding,
    XCLIPConfig,
    XCLIPModel,
)

VOCAB = 99
BOS, EOS, PAD = 97, 98, 1
FRAMES = 4
IMAGE = 32

_TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
             max_position_embeddings=24, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
_VISION = dict(hidden_size=48, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4, image_size=IMAGE,
               patch_size=8)


def tiny_clip() -> CLIPModel:
    return CLIPModel(CLIPConfig(text_config=_TEXT, vision_config=_VISION, projection_dim=24)).eval()


def tiny_siglip() -> SiglipModel:
    return SiglipModel(SiglipConfig(text_config=dict(_TEXT, projection_size=48), vision_config=_VISION)).eval()


def tiny_xclip() -> XCLIPModel:
    vision = dict(_VISION, num_frames=FRAMES, mit_hidden_size=24, mit_intermediate_size=30, mit_num_hidden_layers=1,
                  mit_num_attention_heads=2)
    config = XCLIPConfig(text_config=_TEXT, vision_config=vision, projection_dim=24, prompt_layers=1,
                         prompt_num_attention_heads=2)
    return XCLIPModel(config).eval()


def tiny_tvp() -> TvpForVideoGrounding:
    backbone = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"])
    config = TvpConfig(backbone_config=backbone, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
                       num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=24, pad_token_id=PAD,
                       max_grid_row_position_embeddings=8, max_grid_col_position_embeddings=8, visual_prompt_size=4,
                       max_img_size=64, num_frames=3)
    return TvpForVideoGrounding(config).eval()


BUILDERS = {"clip": tiny_clip, "siglip": tiny_siglip, "x_clip": tiny_xclip, "tvp": tiny_tvp}


def text_batch(batch: int = 2, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """input_ids [BOS, words..., EOS, PAD...] with ragged lengths, and the matching attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((batch, length), PAD)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for row in range(batch):
        n = length - (row % 3)  # ragged: some rows are padded
        ids[row, 0] = BOS
        ids[row, 1 : n - 1] = torch.randint(2, 90, (n - 2,), generator=g)
        ids[row, n - 1] = EOS
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def video_batch(arch: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """pixel_values (batch, frames, 3, H, W) for `arch`."""
    g = torch.Generator().manual_seed(seed)
    if arch == "tvp":
        return torch.randn(batch, 3, 3, 64, 64, generator=g)
    return torch.randn(batch, FRAMES, 3, IMAGE, IMAGE, generator=g)


def inputs(arch: str, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    if arch == "tvp":
        batch = 1  # transformers' TVP fails for batch > 1 (add_2d_positional_embeddings)
    return {**text_batch(batch, seed=seed), "pixel_values": video_batch(arch, batch, seed=seed)}


WORDS = ("[UNK] [PAD] the a person red blue green square circle triangle moves slides left right up down grows "
         "shrinks opens door light turns on off").split()


def tiny_tokenizer():
    """A word-level tokenizer for the tiny models: [BOS] words [EOS], ids below the models' EOS, PAD = 1."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(WORDS)}
    vocab.update({"[BOS]": BOS, "[EOS]": EOS})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", BOS), ("[EOS]", EOS)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]")


def write_video(path, frames, fps: float = 4.0) -> None:
    """Encode uint8 RGB frames (n, H, W, 3) as an MPEG-4 file with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=int(fps))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# Colour -> RGB channel of the "light" in the coloured-light videos.
LIGHT_COLOURS = {"red": 0, "green": 1, "blue": 2}


def write_light_workspace(root, model, num_videos: int) -> None:
    """A small grounding workspace under `root` for the CLI tests: `model` and the tiny tokenizer saved in `base/`,
    `num_videos` 8 s videos at 1 fps in `videos/` where the queried colour's light is on during the moment, and
    `ann.jsonl` with one query per video ("the red light turns on", window in seconds)."""
    import json

    import numpy as np

    model.save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    (root / "videos").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(num_videos):
        colour = list(LIGHT_COLOURS)[i % 3]
        start = int(rng.integers(0, 6))
        end = int(rng.integers(start + 1, 9))
        frames = np.full((8, 32, 32, 3), 96, np.uint8)
        frames[start:end, :, :, LIGHT_COLOURS[colour]] = 255
        write_video(root / "videos" / f"v{i}.mp4", frames, fps=1)
        lines.append({"qid": f"q{i}", "vid": f"v{i}", "query": f"the {colour} light turns on", "duration": 8.0,
                      "relevant_windows": [[float(start), float(end)]]})
    (root / "ann.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def layer_outputs(layers, run) -> list:
    """The hidden-state output of each module of `layers` (e.g. a vision encoder's layers) while `run()` runs, in
    layer order: the reference for intermediate states, independent of `output_hidden_states` (which some
    transformers releases ignore when a tower is called directly)."""
    outputs = {}
    handles = [layer.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(
        i, out[0] if isinstance(out, tuple) else out)) for i, layer in enumerate(layers)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return [outputs[i] for i in range(len(layers))]
