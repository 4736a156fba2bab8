"""End to end: prompt-tune a tiny encoder + heads on a tiny synthetic grounding set, save, reload, ground()."""

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model

import peft_vtg
from peft_vtg import VTGPromptConfig
from peft_vtg.data import GroundingCollator, decode_video
from peft_vtg.metrics import evaluate_moments
from tiny_models import tiny_clip, tiny_tokenizer, write_video

FRAMES, SIZE = 8, 32


def synthetic_set(n: int, seed: int = 0):
    """Videos of 8 grey frames where the queried colour fills the frames of the moment; query names the colour."""
    g = torch.Generator().manual_seed(seed)
    colours = {"red": 0, "green": 1, "blue": 2}
    rows, videos = [], {}
    for i in range(n):
        name = list(colours)[i % 3]
        start = int(torch.randint(0, FRAMES - 2, (1,), generator=g))
        end = int(torch.randint(start, FRAMES, (1,), generator=g))
        frames = torch.full((FRAMES, 3, SIZE, SIZE), -1.0) + 0.1 * torch.randn(FRAMES, 3, SIZE, SIZE, generator=g)
        frames[start : end + 1, colours[name]] = 1.5
        vid = f"v{i}"
        videos[vid] = frames
        duration = 16.0  # 2 s per frame
        rows.append({"qid": f"q{i}", "vid": vid, "query": f"the {name} light turns on", "duration": duration,
                     "windows": [[start * 2.0, (end + 1) * 2.0]]})
    return rows, videos


def mean_iou(model, rows, videos, tokenizer) -> float:
    predictions = {
        row["qid"]: peft_vtg.ground(model, videos[row["vid"]], row["query"], tokenizer=tokenizer, duration=16.0)
        for row in rows
    }
    return evaluate_moments(predictions, {row["qid"]: row["windows"] for row in rows})["mIoU"]


def test_train_save_reload_ground(tmp_path):
    torch.manual_seed(0)
    base = tiny_clip()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    config = VTGPromptConfig(num_video_tokens=2, num_text_tokens=2, head_hidden_size=32, head_num_attention_heads=4,
                             head_num_layers=1, head_dropout=0.0, vtm_heads=["violet", "all_in_one"])
    model = get_peft_model(base, config)
    rows, videos = synthetic_set(12)
    collate = GroundingCollator(tiny_tokenizer(), videos.__getitem__)
    batch = collate(rows)
    assert torch.equal(batch["pixel_values"][3], videos["v3"])
    tokenizer = tiny_tokenizer()
    untrained = mean_iou(model, rows, videos, tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(40):
        out = model.forward_grounding(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses

    model.save_pretrained(tmp_path / "adapter")
    fresh = tiny_clip()
    fresh.load_state_dict(base_state)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")

    # one video tensor, one query
    moments = peft_vtg.ground(loaded, videos["v0"], rows[0]["query"], tokenizer=tokenizer, duration=16.0)
    assert 1 <= len(moments) <= 5
    assert all(0.0 <= s < e <= 16.0 for s, e, _ in moments)
    assert [m[2] for m in moments] == sorted((m[2] for m in moments), reverse=True)
    # a batch of tensors, one query each, equals the loop over single calls
    batch_moments = peft_vtg.ground(loaded, [videos["v0"], videos["v1"]], [rows[0]["query"], rows[1]["query"]],
                                    tokenizer=tokenizer, duration=16.0, top_k=1)
    assert batch_moments[0][0] == pytest.approx(moments[0])
    # trained and reloaded: top-1 moments overlap the truth on the training videos far better than before
    trained = mean_iou(loaded, rows, videos, tokenizer)
    assert trained > 80.0 and trained > untrained + 30.0, (untrained, trained)


def assert_same_moments(actual: list, expected: list) -> None:
    """Two lists of (start, end, score) moments agree in length and, to float tolerance, in every value.

    (pytest.approx refuses nested sequences since pytest 9.)"""
    assert len(actual) == len(expected), (actual, expected)
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=1e-6, atol=1e-6)


def test_ground_from_a_video_file_and_from_features(tmp_path):
    pytest.importorskip("av")
    torch.manual_seed(0)
    model = get_peft_model(tiny_clip(), VTGPromptConfig(num_video_tokens=0, num_text_tokens=2, head_hidden_size=16,
                                                        head_num_attention_heads=2, head_num_layers=1))
    frames = (np.random.default_rng(0).random((24, SIZE, SIZE, 3)) * 255).astype(np.uint8)
    write_video(tmp_path / "clip.mp4", frames, fps=4)  # 6 s
    tokenizer = tiny_tokenizer()
    from_file = peft_vtg.ground(model, tmp_path / "clip.mp4", ["a door opens", "the light turns off"],
                                tokenizer=tokenizer, num_frames=6)
    assert len(from_file) == 2 and all(0.0 <= s < e <= 6.0 + 1e-6 for ms in from_file for s, e, _ in ms)
    # the same video as features from encode_video gives the same moments (no video prompts in this adapter)
    decoded, duration = decode_video(tmp_path / "clip.mp4", num_frames=6)
    pixels = peft_vtg.data.preprocess_frames(decoded, image_size=SIZE).unsqueeze(0)
    with torch.no_grad():
        features = model.encode_video(pixels)[0]  # (frames, dim)
    from_features = peft_vtg.ground(model, features, "a door opens", tokenizer=tokenizer, duration=duration)
    assert_same_moments(from_features, from_file[0])
    with pytest.raises(ValueError, match="pass duration="):
        peft_vtg.ground(model, features, "a door opens", tokenizer=tokenizer)
    # the tuner itself works too
    assert_same_moments(peft_vtg.ground(model.base_model, features, "a door opens", tokenizer=tokenizer,
                                        duration=duration), from_features)
    with pytest.raises(TypeError, match="not a VTG prompt model"):
        peft_vtg.ground(tiny_clip(), features, "a door opens", tokenizer=tokenizer, duration=duration)
