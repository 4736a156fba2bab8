"""The frozen-prefix cache (issue #13): cached == uncached for CLIP, SigLIP and X-CLIP at k = 0, 1, L (forward and
after training steps), every kind of mismatch refused, an interrupted build resumed, 2 processes == 1, and the CLI
round trip cache -> train -> evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from peft_vtg import VTGPromptConfig
import peft_vtg.cache as cache_module
from peft_vtg.cache import CacheMismatchError, CachedVideoStates, build_cache
from peft_vtg.data import GroundingCollator
from peft_vtg.training import GroundingModule
from tiny_models import BUILDERS, FRAMES, IMAGE, layer_outputs, tiny_tokenizer, write_light_workspace

ROOT = Path(__file__).resolve().parents[1]
LAYERS = 3  # video layers of the tiny models
HEAD = dict(head_hidden_size=16, head_num_attention_heads=2, head_num_layers=1)
QUERIES = ["the red square moves left", "a blue circle grows", "the green light turns on", "a person opens the door",
           "the triangle shrinks", "red circle slides up"]


class Frames:
    """A video source of deterministic random frames (FRAMES, 3, IMAGE, IMAGE) per id, with the sampling attributes
    `build_cache` records (as `VideoFiles` has them); counts the videos it was asked for."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.num_frames, self.fps = FRAMES, None
        self.preprocess = dict(image_size=IMAGE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), processor=None)
        self.calls: list[str] = []
        self.fail_on = fail_on

    def __call__(self, vid: str) -> torch.Tensor:
        if vid == self.fail_on:
            raise RuntimeError(f"simulated crash while decoding {vid}")
        self.calls.append(vid)
        generator = torch.Generator().manual_seed(int(vid[1:]))
        return torch.randn(FRAMES, 3, IMAGE, IMAGE, generator=generator)


def rows(n: int = 6) -> list[dict]:
    return [{"qid": f"q{i}", "vid": f"v{i}", "query": QUERIES[i % len(QUERIES)], "duration": 8.0,
             "windows": [[float(i % 4), float(i % 4 + 3)]]} for i in range(n)]


def base(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return BUILDERS[arch]()


def adapter_config(layer: int, head_video_layers: int = 1) -> VTGPromptConfig:
    """Video and text prompts from layer `layer` (none in the video stream at k = L), with dropout and matching
    negatives on, so that the training comparison exercises the random parts too; the head reads the last
    `head_video_layers` video layers."""
    video = dict(num_video_tokens=2, video_prompt_depth=LAYERS - layer) if layer < LAYERS else dict(num_video_tokens=0)
    return VTGPromptConfig(num_text_tokens=2, text_prompt_depth=1, prompt_start_layer=min(layer, LAYERS - 1),
                           vtm_heads=["violet"], video_prompt_dropout=0.1, head_video_layers=head_video_layers,
                           **video, **HEAD)


def labels_off(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("start_frames", "end_frames")}


# (cache layer k, final layers the cache stores, layers the head reads): one-layer heads at k = 0, 1, L, and heads
# over several layers from a cache below L (the layers from k-1 on are computed) and from final features.
CASES = [(0, 1, 1), (1, 1, 1), (LAYERS, 1, 1), (0, 1, 3), (1, 1, 3), (2, 1, 2), (LAYERS, 3, 3), (LAYERS, 3, 2)]


@pytest.mark.parametrize("layer, feature_layers, head_video_layers", CASES)
@pytest.mark.parametrize("arch", ["clip", "siglip", "x_clip"])
def test_cached_equals_uncached(arch, layer, feature_layers, head_video_layers, tmp_path):
    frames = Frames()
    manifest = build_cache(base(arch), [r["vid"] for r in rows()], frames, layer, str(tmp_path), dtype="fp32",
                           batch_size=4, disable_tqdm=True, feature_layers=feature_layers)
    assert manifest["complete"] and len(manifest["videos"]) == 6 and manifest["layer"] == layer

    def model():
        torch.manual_seed(1)
        return get_peft_model(base(arch), adapter_config(layer, head_video_layers))

    cached_model, uncached_model = model(), model()
    cache = CachedVideoStates(str(tmp_path), cached_model, layer=layer, num_frames=FRAMES, image_size=IMAGE)
    tokenizer = tiny_tokenizer()
    cached_collate, uncached_collate = GroundingCollator(tokenizer, cache), GroundingCollator(tokenizer, frames)
    batches = [rows()[:3], rows()[3:]]
    # The layers below k never run from the cache.
    bound = cached_model.base_model.model.vtg_prompts.bound
    calls = []
    handles = [block.register_forward_pre_hook(lambda *a, i=i: calls.append(i)) for i, block in
               enumerate(bound.video.layers)]

    # forward: grounding logits equal (an fp32 cache reproduces the computation)
    for model_, collate in ((cached_model, cached_collate), (uncached_model, uncached_collate)):
        model_.eval()
    with torch.no_grad():
        for part in batches:
            calls.clear()
            cached = cached_model.forward_grounding(**labels_off(cached_collate(part)))
            assert sorted(set(calls)) == list(range(layer, LAYERS))
            uncached = uncached_model.forward_grounding(**labels_off(uncached_collate(part)))
            for key in ("start_logits", "end_logits", "inside_logits"):
                assert (cached[key] - uncached[key]).abs().max() <= 1e-5, key
    for handle in handles:
        handle.remove()

    # training: the same adapter after a few steps (dropout and matching negatives drawn alike). Plain SGD: the
    # cache encodes other batches of frames than the uncached path, which changes float rounding (~1e-7), and Adam
    # would turn that noise into full-size steps for parameters whose true gradient is zero (attention key biases;
    # see docs/design.md, "Comparing 1 and 2 processes"). The CLI test compares AdamW-trained adapters by output.
    initial = {k: v.detach().clone() for k, v in cached_model.named_parameters() if v.requires_grad}
    results = []
    for model_, collate in ((cached_model, cached_collate), (uncached_model, uncached_collate)):
        module = GroundingModule(model_).train()
        assert not model_.get_base_model().training  # the frozen base stays in eval mode
        optimizer = torch.optim.SGD([p for p in model_.parameters() if p.requires_grad], lr=0.5)
        torch.manual_seed(2)
        losses = []
        for step in range(3):
            out = module(**collate(batches[step % 2]))
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(out.loss.item())
        results.append(({k: v.detach().clone() for k, v in model_.named_parameters() if v.requires_grad}, losses))
    (cached_weights, cached_losses), (uncached_weights, uncached_losses) = results
    assert cached_losses == pytest.approx(uncached_losses, abs=1e-5)
    assert cached_weights.keys() == uncached_weights.keys()
    for name in cached_weights:
        assert (cached_weights[name] - uncached_weights[name]).abs().max() <= 1e-5, name
    # the adapter did train (the comparison is not between two untouched adapters)
    prompts = [name for name in initial if name.endswith(("text_prompts", "video_prompts"))]
    assert prompts and all(not torch.equal(cached_weights[name], initial[name]) for name in prompts)
    mixing = [name for name in initial if ".layer_query." in name or name.endswith("layer_bias")]
    assert len(mixing) == (3 if head_video_layers > 1 else 0)  # the per-query layer weights (weight, bias, bias)
    assert all(not torch.equal(cached_weights[name], initial[name]) for name in mixing)


def test_fp16_cache_is_close_and_half_the_size(tmp_path):
    vids = [r["vid"] for r in rows()]
    build_cache(base("clip"), vids, Frames(), 1, str(tmp_path / "fp32"), dtype="fp32", disable_tqdm=True)
    build_cache(base("clip"), vids, Frames(), 1, str(tmp_path / "fp16"), dtype="fp16", disable_tqdm=True)
    full, half = CachedVideoStates(str(tmp_path / "fp32")), CachedVideoStates(str(tmp_path / "fp16"))
    assert half("v0").dtype == torch.float16 and full("v0").dtype == torch.float32
    assert half("v0").shape == full("v0").shape == (FRAMES, 17, 48)  # (frames, 16 patches + CLS, hidden)
    torch.testing.assert_close(half("v0").float(), full("v0"), atol=2e-2, rtol=1e-2)
    size = lambda d: sum(os.path.getsize(d / n) for n in os.listdir(d) if n.endswith(".safetensors"))  # noqa: E731
    assert size(tmp_path / "fp16") < 0.55 * size(tmp_path / "fp32")


@pytest.mark.parametrize("arch, tokens", [("clip", 1), ("x_clip", 1), ("siglip", 16)])
def test_a_cache_of_final_states_keeps_only_the_tokens_the_tower_pools(arch, tokens, tmp_path):
    """At k = L only the tokens `finish` reads are stored (CLIP's and X-CLIP's CLS; SigLIP's attention pooling reads
    all 16); with feature_layers = 3 those of each of the last three layers, equal to the base model's own states."""
    vids = [r["vid"] for r in rows()]
    model = base(arch)
    one = build_cache(model, vids, Frames(), LAYERS, str(tmp_path / "one"), dtype="fp32", disable_tqdm=True)
    three = build_cache(model, vids, Frames(), LAYERS, str(tmp_path / "three"), feature_layers=3, dtype="fp32",
                        disable_tqdm=True)
    assert (one["tokens"], one["feature_layers"], three["tokens"], three["feature_layers"]) == (tokens, 1, tokens, 3)
    single, layered = CachedVideoStates(str(tmp_path / "one")), CachedVideoStates(str(tmp_path / "three"))
    assert single("v2").shape == (FRAMES, tokens, 48) and layered("v2").shape == (FRAMES, 3, tokens, 48)
    with torch.no_grad():
        hidden = layer_outputs(model.vision_model.encoder.layers, lambda: model.vision_model(pixel_values=Frames()("v2")))
    for index in range(3):
        torch.testing.assert_close(layered("v2")[:, index], hidden[index][:, :tokens])
    assert torch.equal(layered("v2")[:, 2], single("v2"))
    size = lambda d: sum(os.path.getsize(d / n) for n in os.listdir(d) if n.endswith(".safetensors"))  # noqa: E731
    below = build_cache(model, vids, Frames(), LAYERS - 1, str(tmp_path / "below"), dtype="fp32", disable_tqdm=True)
    assert below["tokens"] == (16 if arch == "siglip" else 17)  # SigLIP has no CLS token
    if tokens == 1:  # 1 token of 17 per frame (plus the shards' headers)
        assert size(tmp_path / "one") < 0.15 * size(tmp_path / "below")


def test_heads_over_more_layers_than_a_cache_gives_are_refused_with_the_cache_to_build(tmp_path):
    vids = [r["vid"] for r in rows()]
    build_cache(base("clip"), vids, Frames(), LAYERS, str(tmp_path / "final"), disable_tqdm=True)
    build_cache(base("clip"), vids, Frames(), 2, str(tmp_path / "two"), disable_tqdm=True)
    model = get_peft_model(base("clip"), VTGPromptConfig(num_video_tokens=0, head_video_layers=3, **HEAD))
    for directory, layer in (("final", LAYERS), ("two", 2)):
        fix = (rf"reads the features of the last 3 video layers .* entering layer {layer} give the last "
               rf"{LAYERS - layer + 1} only\. Build the cache at --layer 1 or below, or of final features with "
               "--layer 3 --feature-layers 3")
        with pytest.raises(ValueError, match=fix):
            CachedVideoStates(str(tmp_path / directory), model)
        batch = GroundingCollator(tiny_tokenizer(), CachedVideoStates(str(tmp_path / directory)))(rows()[:2])
        with pytest.raises(ValueError, match=fix):
            model.forward_grounding(**batch)
    with pytest.raises(ValueError, match=r"feature_layers=2 stores the outputs of the last 2 layers, which only a "
                       r"cache of final features holds \(--layer 3\)"):
        build_cache(base("clip"), vids, Frames(), 1, str(tmp_path / "bad"), feature_layers=2, disable_tqdm=True)
    with pytest.raises(ValueError, match=r"feature_layers must be a whole number in 1\.\.3"):
        build_cache(base("clip"), vids, Frames(), LAYERS, str(tmp_path / "bad"), feature_layers=4, disable_tqdm=True)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("layer, resumes", [(1, True), (LAYERS, False)])
def test_caches_built_before_feature_layers_existed(layer, resumes, tmp_path):
    """A manifest without feature_layers: below L it meant 1 and resumes; at L it stored every token of the final
    states, so a build with today's settings (pooled tokens) must not add shards of another shape to it."""
    vids = [f"v{i}" for i in range(4)]
    build_cache(base("clip"), vids[:2], Frames(), layer, str(tmp_path), batch_size=2, disable_tqdm=True)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["feature_layers"]
    path.write_text(json.dumps(manifest))
    assert CachedVideoStates(str(tmp_path)).feature_layers == 1  # readable either way
    if resumes:
        rerun = Frames()
        build_cache(base("clip"), vids, rerun, layer, str(tmp_path), batch_size=2, disable_tqdm=True)
        assert rerun.calls == ["v2", "v3"]
    else:
        with pytest.raises(CacheMismatchError, match="feature_layers: cache None, now 1"):
            build_cache(base("clip"), vids, Frames(), layer, str(tmp_path), batch_size=2, disable_tqdm=True)


# ---------------------------------------------------------------- mismatches
@pytest.fixture(scope="module")
def clip_cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cache")
    build_cache(base("clip"), [r["vid"] for r in rows()], Frames(), 1, str(directory), dtype="fp32",
                disable_tqdm=True, base_model_name="tiny-clip")
    return directory


@pytest.mark.parametrize("kwargs, match", [
    (dict(layer=2), r"holds the hidden states entering video layer 1, but layer 2 .*--layer 2"),
    (dict(num_frames=8), r"sampled videos at num_frames=4, but num_frames=8 .*--num-frames 8"),
    (dict(fps=2.0), r"sampled videos at num_frames=4, but fps=2.0 .*--fps 2.0"),
    (dict(image_size=64), r"preprocessed frames with image_size=32 .* image_size=64"),
    (dict(mean=(0.48, 0.45, 0.4)), r"preprocessed frames with mean=\[0.5, 0.5, 0.5\]"),
    (dict(std=(0.5, 0.5, 0.5)), r"preprocessed frames with std=\[0.25, 0.25, 0.25\]"),
])
def test_a_cache_of_other_settings_is_refused(clip_cache, kwargs, match):
    with pytest.raises(CacheMismatchError, match=match):
        CachedVideoStates(str(clip_cache), **kwargs)
    CachedVideoStates(str(clip_cache), layer=1, num_frames=FRAMES, image_size=IMAGE, mean=(0.5,) * 3)  # matching


@pytest.mark.parametrize("content", [b"{broken", b"\xff\xfe\x00binary", b"[" * 100_000, b'{"layer": ' + b"7" * 5000])
def test_a_damaged_cache_manifest_is_named_with_the_fix(clip_cache, tmp_path, content):
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(clip_cache, copy)
    (copy / "manifest.json").write_bytes(content)
    with pytest.raises(ValueError, match=r"manifest.json is not readable JSON \(.*\); rerun `peft-vtg cache` with the "
                                         r"same arguments to rewrite it"):
        CachedVideoStates(str(copy))


def test_a_cache_of_another_model_is_refused(clip_cache):
    CachedVideoStates(str(clip_cache), base("clip"))  # the weights it was built from
    with pytest.raises(CacheMismatchError, match=r"built from another model .*weights_sha256: cache [0-9a-f]{12}"
                       r"\.\.\., now [0-9a-f]{12}\.\.\..*'tiny-clip'.*rebuild the cache"):
        CachedVideoStates(str(clip_cache), base("clip", seed=1))
    with pytest.raises(CacheMismatchError, match=r"architecture: cache 'clip', now 'siglip'"):
        CachedVideoStates(str(clip_cache), base("siglip"))
    # only the weights the cached states depend on count: changing layers >= k or the text tower is fine
    model = base("clip")
    with torch.no_grad():
        model.vision_model.encoder.layers[1].mlp.fc1.weight.add_(1.0)
        model.text_model.encoder.layers[0].mlp.fc1.weight.add_(1.0)
    CachedVideoStates(str(clip_cache), model)
    with torch.no_grad():
        model.vision_model.encoder.layers[0].mlp.fc1.weight.add_(1.0)
    with pytest.raises(CacheMismatchError, match="weights_sha256"):
        CachedVideoStates(str(clip_cache), model)


def test_video_prompts_below_the_cached_layer_are_refused(clip_cache):
    model = get_peft_model(base("clip"), VTGPromptConfig(num_video_tokens=2, prompt_start_layer=0, **HEAD))
    fix = r"prompt_start_layer=0.*enter layer 1.*Build the cache at --layer 0 or lower, set prompt_start_layer >= 1"
    with pytest.raises(ValueError, match=fix):
        CachedVideoStates(str(clip_cache), model)
    batch = GroundingCollator(tiny_tokenizer(), CachedVideoStates(str(clip_cache)))(rows()[:2])
    with pytest.raises(ValueError, match=fix):
        model.forward_grounding(**batch)
    # text prompts below k are fine: the text tower runs whole
    ok = get_peft_model(base("clip"), VTGPromptConfig(num_video_tokens=0, num_text_tokens=2, prompt_start_layer=0,
                                                      **HEAD))
    CachedVideoStates(str(clip_cache), ok)
    assert ok.forward_grounding(**batch).loss is not None


def test_a_build_from_before_frames_were_turned_upright_does_not_resume(tmp_path, monkeypatch):
    # Its frames of phone videos lie on their side: resuming would mix them with upright ones.
    real = cache_module.sampling_settings

    def as_before(videos):
        settings = real(videos)
        del settings["preprocessing"]["orientation"]
        return settings

    monkeypatch.setattr(cache_module, "sampling_settings", as_before)
    with pytest.raises(RuntimeError, match="simulated crash while decoding v2"):
        build_cache(base("clip"), ["v0", "v1", "v2"], Frames(fail_on="v2"), 1, str(tmp_path), batch_size=2,
                    disable_tqdm=True)
    monkeypatch.setattr(cache_module, "sampling_settings", real)
    with pytest.raises(CacheMismatchError, match=r"built with other settings \(preprocessing: .*orientation"):
        build_cache(base("clip"), ["v0", "v1", "v2"], Frames(), 1, str(tmp_path), batch_size=2, disable_tqdm=True)


def test_resuming_with_other_settings_is_refused(clip_cache, tmp_path):
    with pytest.raises(CacheMismatchError, match=r"built with other settings \(.*layer: cache 1, now 2\).*another "
                       "--output-dir"):
        build_cache(base("clip"), ["v0"], Frames(), 2, str(clip_cache), dtype="fp32", disable_tqdm=True)
    with pytest.raises(ValueError, match=r"layer must be a whole number in 0\.\.3"):
        build_cache(base("clip"), ["v0"], Frames(), 4, str(tmp_path), disable_tqdm=True)
    with pytest.raises(ValueError, match="Video id '../x' is not a plain file name"):
        build_cache(base("clip"), ["../x"], Frames(), 1, str(tmp_path), disable_tqdm=True)
    with pytest.raises(ValueError, match="without a VTG adapter"):
        build_cache(get_peft_model(base("clip"), VTGPromptConfig(**HEAD)), ["v0"], Frames(), 1, str(tmp_path))
    with pytest.raises(ValueError, match="needs exactly 4 frames per clip"):
        frames = Frames()
        frames.num_frames = 8
        build_cache(base("x_clip"), ["v0"], frames, 1, str(tmp_path), disable_tqdm=True)
    assert not os.listdir(tmp_path)  # refused before anything was written


# ---------------------------------------------------------------- resume
def test_an_interrupted_build_resumes_with_the_rest_and_gives_the_same_files(tmp_path):
    vids = [f"v{i}" for i in range(7)]
    whole = Frames()
    build_cache(base("clip"), vids, whole, 1, str(tmp_path / "whole"), batch_size=2, disable_tqdm=True)
    assert sorted(whole.calls) == vids

    # The third batch (v4, v5) fails: the two finished batches are kept and listed.
    with pytest.raises(RuntimeError, match="simulated crash while decoding v4"):
        build_cache(base("clip"), vids, Frames(fail_on="v4"), 1, str(tmp_path / "resumed"), batch_size=2,
                    disable_tqdm=True)
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert not manifest["complete"] and sorted(manifest["videos"]) == ["v0", "v1", "v2", "v3"]
    with pytest.raises(ValueError, match="not in the cache"):
        CachedVideoStates(str(tmp_path / "resumed"))("v5")
    # leftovers of a write a kill interrupted are removed on the rerun
    (tmp_path / "resumed" / "shard-0123456789abcdef.safetensors.tmp-99999").write_bytes(b"half a shard")
    (tmp_path / "resumed" / ".tmpQ3xZ9a").write_bytes(b"half a shard safetensors itself was writing")

    rerun = Frames()
    build_cache(base("clip"), vids, rerun, 1, str(tmp_path / "resumed"), batch_size=2, disable_tqdm=True)
    assert sorted(rerun.calls) == ["v4", "v5", "v6"]  # only the rest was decoded and encoded
    whole_files = sorted(os.listdir(tmp_path / "whole"))
    assert sorted(os.listdir(tmp_path / "resumed")) == whole_files
    for name in whole_files:
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name

    again = Frames()  # a finished cache: nothing to do
    build_cache(base("clip"), vids, again, 1, str(tmp_path / "resumed"), batch_size=2, disable_tqdm=True)
    assert again.calls == []
    # ... and a kill during such a rerun (here: at its first step after the directory is prepared) leaves it finished
    finished = (tmp_path / "resumed" / "manifest.json").read_bytes()
    assert json.loads(finished)["complete"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache_module, "_build_locked", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            build_cache(base("clip"), vids[:3], Frames(), 1, str(tmp_path / "resumed"), batch_size=2,
                        disable_tqdm=True)
    assert (tmp_path / "resumed" / "manifest.json").read_bytes() == finished

    # the same settings with more videos (e.g. the test split) add them to the cache
    more = Frames()
    manifest = build_cache(base("clip"), ["v7", "v8"], more, 1, str(tmp_path / "resumed"), batch_size=2,
                           disable_tqdm=True)
    assert more.calls == ["v7", "v8"] and sorted(manifest["videos"]) == vids + ["v7", "v8"] and manifest["complete"]


def test_a_build_that_finished_no_shard_does_not_block_a_rerun_with_other_settings(tmp_path):
    # The first batch fails (a wrong setting shows on the first video): the manifest lists nothing done.
    with pytest.raises(RuntimeError, match="simulated crash while decoding v0"):
        build_cache(base("clip"), ["v0", "v1"], Frames(fail_on="v0"), 1, str(tmp_path), batch_size=2,
                    disable_tqdm=True)
    assert json.loads((tmp_path / "manifest.json").read_text())["videos"] == {}
    manifest = build_cache(base("clip"), ["v0", "v1"], Frames(), 2, str(tmp_path), batch_size=2, disable_tqdm=True)
    assert manifest["complete"] and manifest["layer"] == 2 and sorted(manifest["videos"]) == ["v0", "v1"]
    # with a shard done, other settings are refused as before
    with pytest.raises(CacheMismatchError, match=r"layer: cache 2, now 1"):
        build_cache(base("clip"), ["v0"], Frames(), 1, str(tmp_path), disable_tqdm=True)
    # a shard on disk that the manifest does not list yet (killed between the two writes) counts as done
    listed = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**listed, "videos": {}, "complete": False}))
    with pytest.raises(CacheMismatchError, match=r"layer: cache 2, now 1"):
        build_cache(base("clip"), ["v0"], Frames(), 1, str(tmp_path), disable_tqdm=True)


def test_leftovers_of_killed_writes_are_told_from_the_files_around_them(tmp_path):
    from peft_vtg.files import is_interrupted_write, remove_interrupted_writes

    leftovers = ["shard-0123456789abcdef.safetensors.tmp-99999", "manifest.json.tmp-7", ".tmpQ3xZ9a", ".tmp000000"]
    kept = ["manifest.json", "shard-0123456789abcdef.safetensors", "v0.npy", "tmpQ3xZ9a",  # Python's tempfile names
            ".tmpQ3xZ9", ".tmpQ3xZ9ab", "take.tmp-2.npy", ".tmp-dir-not-a-file"]
    assert [is_interrupted_write(n) for n in leftovers] == [True] * 4
    assert [is_interrupted_write(n) for n in kept[:-1]] == [False] * 7  # take.tmp-2.npy: a video id with ".tmp-"
    for name in leftovers + kept[:-1]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / kept[-1]).mkdir()  # only files are removed
    assert remove_interrupted_writes(str(tmp_path)) == sorted(leftovers)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


KILL_SCRIPT = ROOT / "tests" / "scripts" / "cache_kill.py"


def run_cache_script(output: Path, kill_at: str = "", sleep: float = 0.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KILL_AT": kill_at, "VIDEO_SLEEP": str(sleep)}
    return subprocess.run([sys.executable, str(KILL_SCRIPT), str(output)], capture_output=True, text=True,
                          timeout=900, env=env, cwd=ROOT)


def test_sigkill_at_any_moment_of_a_build_then_a_rerun_gives_the_uninterrupted_files(tmp_path):
    """kill -9 in the middle of a shard's write (ours, and inside safetensors' save_file), between a shard's write and
    its rename, in the middle of a manifest rewrite and at a random moment, one after another on the same directory:
    every rerun keeps what was finished, and the last one ends with the files of a build that was never interrupted."""
    import random
    import signal

    vids = [f"v{i}" for i in range(7)]
    build_cache(base("clip"), vids, Frames(), 1, str(tmp_path / "whole"), batch_size=2, disable_tqdm=True)
    killed = tmp_path / "killed"

    def shards() -> list[str]:
        return sorted(n for n in os.listdir(killed) if n.endswith(".safetensors"))

    for kill_at, finished, leftover in (("shard-write:2", 1, ".tmp-"), ("shard-rename:1", 1, ".tmp-"),
                                        ("manifest:2", 2, ".tmp-"), ("shard-save:1", 2, ".tmpK1ll9d")):
        result = run_cache_script(killed, kill_at)
        assert result.returncode == -signal.SIGKILL and "finished" not in result.stdout, (kill_at, result.stderr)
        assert len(shards()) == finished, kill_at
        assert [n for n in os.listdir(killed) if leftover in n], kill_at  # what the kill left behind
        manifest = read_manifest_of(killed)  # always whole JSON: written atomically
        assert not manifest["complete"] and set(manifest["videos"]) <= set(vids)
    seed = random.randrange(1 << 16)
    process = subprocess.Popen([sys.executable, str(KILL_SCRIPT), str(killed)], stdout=subprocess.PIPE, text=True,
                               cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "VIDEO_SLEEP": "0.2"})
    assert process.stdout.readline().strip() == "started"
    time.sleep(random.Random(seed).uniform(0.0, 1.2))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)

    result = run_cache_script(killed)
    assert result.returncode == 0, (seed, result.stderr[-3000:])
    encoded = result.stdout.strip().splitlines()[-1]
    assert encoded.startswith("finished") and "'v0'" not in encoded, (seed, encoded)  # v0, v1 were never redone
    names = sorted(os.listdir(tmp_path / "whole"))
    assert sorted(os.listdir(killed)) == names, seed
    for name in names:
        assert (killed / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), (seed, name)


def read_manifest_of(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


# ---------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny CLIP + tokenizer, 6 videos (8 s, 1 fps) where the queried colour fills the moment, annotations."""
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("cli-cache")
    write_light_workspace(root, base("clip"), num_videos=6)
    return root


def cache_command(root, output, *extra):
    return ["cache", "--base-model", str(root / "base"), "--annotations", str(root / "ann.jsonl"), "--video-dir",
            str(root / "videos"), "--num-frames", "8", "--image-size", "32", "--layer", "1", "--output-dir",
            str(output), "--batch-size", "2", "--disable-tqdm", *extra]


def test_cli_cache_train_evaluate_round_trip(workspace, tmp_path, capsys):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel

    from peft_vtg.cli import main
    from peft_vtg.data import VideoFiles, load_annotations

    root = workspace
    assert main(cache_command(root, tmp_path / "cache", "--dtype", "fp32")) == 0
    assert "cached 6 videos (hidden states entering video layer 1 of 3, fp32)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["base_model"] == str(root / "base") and manifest["num_frames"] == 8
    assert manifest["preprocessing"]["image_size"] == 32 and manifest["videos"]["v3"]["frames"] == 8
    assert manifest["videos"]["v3"]["duration"] == pytest.approx(8.0, abs=0.5)

    common = ["--base-model", str(root / "base"), "--train-annotations", str(root / "ann.jsonl"), "--max-steps", "3",
              "--per-device-train-batch-size", "3", "--learning-rate", "0.01", "--num-video-tokens", "2",
              "--num-text-tokens", "2", "--video-prompt-depth", "2", "--head-hidden-size", "16",
              "--head-num-attention-heads", "2", "--head-num-layers", "1", "--disable-tqdm", "true"]
    video_flags = ["--video-dir", str(root / "videos"), "--num-frames", "8", "--image-size", "32"]
    assert main(["train", *common, "--prompt-start-layer", "1", "--cache-dir", str(tmp_path / "cache"),
                 "--output-dir", str(tmp_path / "a")]) == 0
    assert main(["train", *common, "--prompt-start-layer", "1", *video_flags, "--output-dir", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    # The same adapter: compared by what it computes (AdamW moves parameters whose true gradient is zero by rounding
    # noise; see test_cached_equals_uncached), on every query, through the uncached path.
    cached, uncached = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("a", "b"))
    assert cached.keys() == uncached.keys()
    batch = labels_off(GroundingCollator(tiny_tokenizer(), VideoFiles(root / "videos", num_frames=8, image_size=32))(
        list(load_annotations(str(root / "ann.jsonl")))))
    outputs = []
    for directory in ("a", "b"):
        model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(root / "base")), str(tmp_path / directory))
        with torch.no_grad():
            out = model.forward_grounding(**batch)
        outputs.append(torch.cat([out.start_logits.softmax(-1), out.end_logits.softmax(-1),
                                  out.inside_logits.sigmoid()], dim=1))
    assert (outputs[0] - outputs[1]).abs().max() <= 1e-5
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["video_source"].startswith("cache: ") and "(layer 1)" in run["video_source"]

    evaluate = ["evaluate", "--adapter", str(tmp_path / "a"), "--annotations", str(root / "ann.jsonl"), "--json"]
    assert main([*evaluate, "--cache-dir", str(tmp_path / "cache")]) == 0
    from_cache = json.loads(capsys.readouterr().out)
    assert main([*evaluate, *video_flags]) == 0
    assert from_cache == json.loads(capsys.readouterr().out) and from_cache["num_queries"] == 6

    # mismatches end with one clear line and exit code 2
    for flags, message in (
        (["--cache-dir", str(tmp_path / "cache"), "--num-frames", "4"], "sampled videos at num_frames=8, but "
                                                                        "num_frames=4"),
        (["--cache-dir", str(tmp_path / "cache"), "--video-dir", str(root / "videos")], "--cache-dir or --video-dir"),
    ):
        assert main([*evaluate, *flags]) == 2
        assert message in capsys.readouterr().err
    code = main(["train", *common, "--prompt-start-layer", "0", "--cache-dir", str(tmp_path / "cache"),
                 "--output-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "Build the cache at --layer 0 or lower" in err and "Traceback" not in err


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_write_the_same_cache_as_one(workspace, tmp_path):
    from peft_vtg.cli import main

    root = workspace
    assert main(cache_command(root, tmp_path / "one")) == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(free_port()), "-m", "peft_vtg"]
    result = subprocess.run(launch + cache_command(root, tmp_path / "two"), capture_output=True, text=True,
                            timeout=900, cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("cached 6 videos") == 1  # printed by the main process only
    names = sorted(os.listdir(tmp_path / "one"))
    assert len([n for n in names if n.endswith(".safetensors")]) == 3  # 6 videos in batches of 2
    assert sorted(os.listdir(tmp_path / "two")) == names
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


def test_cli_final_features_of_several_layers_train_and_evaluate_a_head_over_them(workspace, tmp_path, capsys):
    from peft_vtg.cli import main

    root = workspace
    command = cache_command(root, tmp_path / "cache", "--dtype", "fp32")
    command[command.index("--layer") + 1] = "3"
    assert main([*command, "--feature-layers", "2"]) == 0
    assert "cached 6 videos (final outputs of the last 2 video layers, 1 token(s) per frame, fp32)" in \
        capsys.readouterr().out
    below = cache_command(root, tmp_path / "below", "--feature-layers", "2")  # at layer 1: no layers to keep
    assert main(below) == 2 and not (tmp_path / "below").exists()
    assert "feature_layers=2 stores the outputs of the last 2 layers" in capsys.readouterr().err
    train = ["train", "--base-model", str(root / "base"), "--train-annotations", str(root / "ann.jsonl"),
             "--max-steps", "2", "--per-device-train-batch-size", "3", "--num-video-tokens", "0", "--num-text-tokens",
             "0", "--grounding-head", "true", "--head-hidden-size", "16", "--head-num-attention-heads", "2",
             "--head-num-layers", "1", "--disable-tqdm", "true", "--cache-dir", str(tmp_path / "cache")]
    assert main([*train, "--head-video-layers", "2", "--output-dir", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["head_video_layers"] == 2
    capsys.readouterr()
    evaluate = ["evaluate", "--adapter", str(tmp_path / "a"), "--annotations", str(root / "ann.jsonl"), "--json"]
    assert main([*evaluate, "--cache-dir", str(tmp_path / "cache")]) == 0
    from_cache = json.loads(capsys.readouterr().out)
    assert main([*evaluate, "--video-dir", str(root / "videos"), "--num-frames", "8", "--image-size", "32"]) == 0
    assert from_cache == json.loads(capsys.readouterr().out)
    code = main([*train, "--head-video-layers", "3", "--output-dir", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "--layer 3 --feature-layers 3" in err and "Traceback" not in err
    assert not (tmp_path / "b" / "adapter_model.safetensors").exists()


def test_hugging_face_trainer_trains_from_a_cache_as_from_frames(tmp_path):
    """GroundingTrainer passes the cache's batch entries (video_hidden_states and the layer they enter) through to
    the grounding forward: the losses per step equal those of the same run from frames."""
    from transformers import TrainingArguments

    from peft_vtg.training import GroundingTrainer

    frames = Frames()
    build_cache(base("clip"), [r["vid"] for r in rows()], frames, 2, str(tmp_path / "cache"), dtype="fp32",
                batch_size=3, disable_tqdm=True)
    losses = []
    for source in (CachedVideoStates(str(tmp_path / "cache")), frames):
        torch.manual_seed(1)
        model = get_peft_model(base("clip"), adapter_config(2))
        args = TrainingArguments(str(tmp_path / "hf"), remove_unused_columns=False, per_device_train_batch_size=3,
                                 max_steps=4, learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to=[],
                                 use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
        trainer = GroundingTrainer(model=model, args=args, train_dataset=rows(),
                                   data_collator=GroundingCollator(tiny_tokenizer(), source))
        trainer.train()
        losses.append([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], abs=1e-4)
