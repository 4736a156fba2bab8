"""Write the notebooks of this folder from the cell sources below (outputs empty, as they are kept in git).

    python notebooks/build_notebooks.py

Edit the cells here, not in the .ipynb files, so the notebooks stay reviewable and free of outputs. The tests
execute every notebook with PEFT_VTG_NOTEBOOK_SMALL=1 (tiny sizes).
"""

from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

SETUP = '''import os, tempfile
import torch
import peft_vtg
from peft import get_peft_model, PeftModel

SMALL = os.environ.get("PEFT_VTG_NOTEBOOK_SMALL") == "1"   # CI runs the notebooks with tiny sizes
WORK = tempfile.mkdtemp(prefix="peft-vtg-notebook-")
torch.manual_seed(0)'''

QUICKSTART = [
    ("md", "# peft_vtg quickstart\n\nPrompt-tune the backbone shipped with peft_vtg (a small CLIP pre-trained on "
           "SynthVTG clips) for video temporal grounding, evaluate it, ground a video and plot the moments, then "
           "save and reload the adapter. Runs offline on a CPU."),
    ("code", SETUP),
    ("md", "## Data: SynthVTG\n\nUntrimmed synthetic videos in which coloured shapes move, grow, blink, appear..., "
           "with paraphrased queries. Rows follow peft_vtg's common schema (`qid, vid, query, duration, windows`)."),
    ("code", '''from peft_vtg.synth import SynthVTG, FrameSource
from peft_vtg.synth.backbone import load_backbone
from peft_vtg.data import GroundingCollator

base, tokenizer = load_backbone()
sizes = {"train": 16, "val": 4, "test": 4} if SMALL else {"train": 1500, "val": 150, "test": 300}
data = SynthVTG(seed=0, num_videos=sizes)
(train_rows, train_videos), (val_rows, val_videos), (test_rows, test_videos) = (data.split(s) for s in ("train", "val", "test"))
videos = {**train_videos, **val_videos, **test_videos}
collator = GroundingCollator(tokenizer, FrameSource(videos, num_frames=16))
print(len(train_rows), "training queries, e.g.", train_rows[0])'''),
    ("md", "## The adapter\n\nVideo prompt tokens in every layer of the frozen vision tower (3 here), plus a grounding "
           "head whose temporal convolution exposes motion; only these train. This is `peft-vtg demo`'s adapter and "
           "the benchmark's `vtg-video` (BENCHMARKS.md). Set `num_text_tokens` to prompt the text tower too."),
    ("code", '''config = peft_vtg.VTGPromptConfig(num_video_tokens=8, num_text_tokens=0, video_prompt_depth=3,
                                  head_hidden_size=64, head_num_layers=2, head_temporal_kernel_size=3,
                                  boundary_smoothing=1.0)
model = get_peft_model(base, config)
model.print_trainable_parameters()'''),
    ("code", '''from peft_vtg.training import VTGTrainingArguments, train

args = VTGTrainingArguments(output_dir=os.path.join(WORK, "adapter"), max_steps=2 if SMALL else 400,
                            per_device_train_batch_size=4 if SMALL else 32, learning_rate=3e-2, head_learning_rate=3e-3,
                            eval_steps=1 if SMALL else 100, disable_tqdm=SMALL)
result = train(model, train_rows, collator, args, eval_dataset=val_rows)
print("best val R1@0.5:", result.best_metric)'''),
    ("md", "## Evaluate on the test split"),
    ("code", '''from torch.utils.data import DataLoader
from peft_vtg.training import GroundingModule, evaluate_grounding
from peft_vtg.metrics import format_table

metrics, predictions = evaluate_grounding(GroundingModule(model), DataLoader(test_rows, batch_size=32, collate_fn=collator),
                                          test_rows)
print(format_table(metrics))'''),
    ("md", "## Ground one video and draw its timeline"),
    ("code", '''import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

row = test_rows[0]
frames = FrameSource(videos, num_frames=16)(row["vid"])    # (16, 3, 32, 32), sampled as in training
moments = peft_vtg.ground(model, frames, row["query"], tokenizer=tokenizer, duration=row["duration"], top_k=3)
print(row["query"], "->", [(round(s, 1), round(e, 1), round(p, 3)) for s, e, p in moments])

fig, ax = plt.subplots(figsize=(8, 1.8))
for start, end in row["windows"]:
    ax.barh(1, end - start, left=start, color="tab:green")
for rank, (start, end, score) in enumerate(moments):
    ax.barh(0, end - start, left=start, color="tab:blue", alpha=1.0 - 0.25 * rank)
ax.set_yticks([0, 1], ["predicted (top 3)", "true"])
ax.set_xlim(0, row["duration"]); ax.set_xlabel("seconds"); ax.set_title(row["query"])
fig.tight_layout()
fig.savefig(os.path.join(WORK, "timeline.png"))'''),
    ("md", "## Save and reload"),
    ("code", '''model.save_pretrained(os.path.join(WORK, "my-adapter"))
reloaded = PeftModel.from_pretrained(load_backbone()[0], os.path.join(WORK, "my-adapter"))
again = peft_vtg.ground(reloaded, frames, row["query"], tokenizer=tokenizer, duration=row["duration"], top_k=3)
assert again == moments, (again, moments)
print("the reloaded adapter grounds the query identically")'''),
]

OWN_DATA = [
    ("md", "# Your own data\n\nTrain on a Charades-STA-style annotation file (`vid start end##sentence` lines) with "
           "pre-extracted per-video features. Here both are written from SynthVTG so the notebook runs offline; "
           "replace the paths with yours."),
    ("code", SETUP),
    ("code", '''import numpy as np
from peft_vtg.synth import SynthVTG, FrameSource
from peft_vtg.synth.backbone import load_backbone

base, tokenizer = load_backbone()
# Pre-extracted features bypass the video encoder, so this adapter prompts only the text stream.
model = get_peft_model(base, peft_vtg.VTGPromptConfig(num_video_tokens=0, num_text_tokens=8, head_hidden_size=64))

rows, videos = SynthVTG(seed=1, num_videos={"train": 8 if SMALL else 300}).split("train")
feature_dir = os.path.join(WORK, "features"); os.makedirs(feature_dir)
source = FrameSource(videos, num_frames=32)
with torch.no_grad():
    for vid in videos:                                   # your own extractor would write these files
        np.save(os.path.join(feature_dir, f"{vid}.npy"), model.encode_video(source(vid).unsqueeze(0))[0].numpy())
annotation = os.path.join(WORK, "my_sta.txt")
with open(annotation, "w") as f:
    for row in rows:
        start, end = row["windows"][0]
        f.write(f"{row['vid']} {start:.2f} {end:.2f}##{row['query']}\\n")
durations = {vid: video.duration for vid, video in videos.items()}   # Charades: read_charades_durations("Charades_v1_test.csv")
print(open(annotation).readline())'''),
    ("code", '''from peft_vtg.data import FeatureDirectory, GroundingCollator, read_charades_sta, read_report

dataset = read_charades_sta(annotation, durations)
print(read_report(dataset))
collator = GroundingCollator(tokenizer, FeatureDirectory(feature_dir))
batch = collator([dataset[0], dataset[1]])
print({k: tuple(v.shape) for k, v in batch.items() if hasattr(v, "shape")})'''),
    ("code", '''from peft_vtg.training import VTGTrainingArguments, train

args = VTGTrainingArguments(output_dir=os.path.join(WORK, "adapter"), max_steps=2 if SMALL else 300,
                            per_device_train_batch_size=4 if SMALL else 32, learning_rate=1e-3, disable_tqdm=SMALL)
result = train(model, dataset, collator, args, eval_dataset=dataset)
print(peft_vtg.metrics.format_table(result.metrics))'''),
    ("md", "## A Hub backbone (online)\n\nWith network access, any supported checkpoint works the same way, e.g. "
           "X-CLIP on decoded video files:\n\n```python\nfrom transformers import AutoProcessor, AutoTokenizer, "
           "XCLIPModel\nbase = XCLIPModel.from_pretrained(\"microsoft/xclip-base-patch32\")\nprocessor = "
           "AutoProcessor.from_pretrained(\"microsoft/xclip-base-patch32\").image_processor\nsource = "
           "peft_vtg.data.VideoFiles(\"videos/\", num_frames=8, processor=processor)   # X-CLIP needs exactly 8 "
           "frames\nmodel = get_peft_model(base, peft_vtg.VTGPromptConfig(num_video_tokens=8, num_text_tokens=8))\n"
           "```\n\n## Several GPUs\n\nThe same training runs with DDP through accelerate:\n\n```bash\naccelerate "
           "launch --multi_gpu --num_processes 4 -m peft_vtg train --base-model microsoft/xclip-base-patch32 \\\n"
           "    --train-annotations charades_sta_train.txt --durations Charades_v1_train.csv --video-dir videos/ \\\n"
           "    --output-dir xclip-charades-vtg\n```\n\nOn CPUs (to try it), accelerate 1.15 needs "
           "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 ...`."),
]


SHARE = [
    ("md", "# Share an adapter\n\nSave, write a model card, push to the Hugging Face Hub, and load back by name. "
           "Without network (and in the tests) the Hub is a local stand-in: its upload calls write into a local "
           "Hub cache, from which loading by name works offline. Set `USE_REAL_HUB = True` with a token to push "
           "for real."),
    ("code", SETUP),
    ("code", '''from peft_vtg.synth import SynthVTG, FrameSource, pixel_values
from peft_vtg.synth.backbone import load_backbone
from peft_vtg.data import GroundingCollator
from peft_vtg.training import VTGTrainingArguments, train

base, tokenizer = load_backbone()
model = get_peft_model(base, peft_vtg.VTGPromptConfig(num_video_tokens=4, num_text_tokens=4, head_hidden_size=32))
rows, videos = SynthVTG(seed=2, num_videos={"train": 8 if SMALL else 200}).split("train")
collator = GroundingCollator(tokenizer, FrameSource(videos, num_frames=16))
adapter_dir = os.path.join(WORK, "synthvtg-vtg")
train(model, rows, collator, VTGTrainingArguments(output_dir=adapter_dir, max_steps=2 if SMALL else 200,
                                                  per_device_train_batch_size=4, disable_tqdm=SMALL),
      eval_dataset=rows)
print(sorted(os.listdir(adapter_dir)))'''),
    ("md", "## The model card\n\n`peft-vtg push` (and `peft_vtg.hub.push_adapter`) write this card: base model, "
           "adapter settings and size, training data, the metrics of `metrics.json`, and how to load."),
    ("code", '''from peft_vtg.hub import model_card

print(model_card(adapter_dir, "you/synthvtg-vtg"))'''),
    ("md", "## The Hub (a local stand-in unless `USE_REAL_HUB`)"),
    ("code", '''import hashlib, shutil
import huggingface_hub
from huggingface_hub import HfApi, RepoUrl

USE_REAL_HUB = False
HUB_CACHE = None if USE_REAL_HUB else os.path.join(WORK, "hub-cache")


def _snapshot(repo_id, files):
    """Write files (path in repo -> local path or bytes) as a Hub-cache snapshot that offline loading finds."""
    revision = hashlib.sha1(repr(sorted(files)).encode()).hexdigest()
    root = os.path.join(HUB_CACHE, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(root, "snapshots", revision)
    os.makedirs(snapshot, exist_ok=True)
    for path, content in files.items():
        target = os.path.join(snapshot, path)
        if isinstance(content, bytes):
            open(target, "wb").write(content)
        else:
            shutil.copy(content, target)
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    open(os.path.join(root, "refs", "main"), "w").write(revision)
    return f"local-hub://{repo_id}@{revision[:8]}"


def local_create_repo(self, repo_id, **kwargs):
    return RepoUrl(f"https://huggingface.co/{repo_id}")


def local_create_commit(self, repo_id, operations, **kwargs):   # what PeftModel.push_to_hub calls
    files = {}
    for op in operations:
        src = op.path_or_fileobj
        files[op.path_in_repo] = src if isinstance(src, (str, os.PathLike)) else (src.read() if hasattr(src, "read") else src)
    return _snapshot(repo_id, files)


def local_upload_folder(self, repo_id, folder_path, allow_patterns=None, **kwargs):   # what peft-vtg push calls
    names = [n for n in os.listdir(folder_path) if allow_patterns is None or n in allow_patterns]
    return _snapshot(repo_id, {n: os.path.join(folder_path, n) for n in names})


if not USE_REAL_HUB:
    import huggingface_hub.hf_api
    import transformers.utils.hub

    HfApi.create_repo, HfApi.create_commit, HfApi.upload_folder = local_create_repo, local_create_commit, local_upload_folder
    # Older huggingface_hub releases also export these as methods bound to one HfApi at import time (and older
    # transformers push through those): point them at the stand-in too.
    for module in (huggingface_hub, huggingface_hub.hf_api, transformers.utils.hub):
        for name in ("create_repo", "create_commit", "upload_folder"):
            if isinstance(getattr(getattr(module, name, None), "__self__", None), HfApi):
                setattr(module, name, getattr(huggingface_hub.hf_api.api, name))'''),
    ("code", '''from peft_vtg.hub import push_adapter

print(push_adapter(adapter_dir, "you/synthvtg-vtg"))   # the VTG model card, adapter and metrics.json
print(model.push_to_hub("you/synthvtg-vtg-peft"))     # PEFT's own path works too (with transformers' generic card)'''),
    ("md", "## Load back by name"),
    ("code", '''loaded = PeftModel.from_pretrained(load_backbone()[0], "you/synthvtg-vtg", cache_dir=HUB_CACHE)
row = rows[0]
frames = pixel_values(videos[row["vid"]].frames)
mine = peft_vtg.ground(model, frames, row["query"], tokenizer=tokenizer, duration=row["duration"])
theirs = peft_vtg.ground(loaded, frames, row["query"], tokenizer=tokenizer, duration=row["duration"])
assert mine == theirs
print("loaded by name from the Hub: same moments", theirs[:2])'''),
]


def write(name: str, cells: list[tuple[str, str]]) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                      for kind, src in cells]
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index:02d}"  # fixed ids (nbformat draws random ones), so a rebuild only diffs what changed
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, HERE / name)


if __name__ == "__main__":
    write("01_quickstart.ipynb", QUICKSTART)
    write("02_your_own_data.ipynb", OWN_DATA)
    write("03_share.ipynb", SHARE)
