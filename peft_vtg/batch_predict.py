"""Batch prediction: many videos and queries in one run, written as QVHighlights submission lines, resumable.

`peft-vtg predict --adapter A --videos DIR_OR_LIST --queries FILE --output preds.jsonl` runs `predict_to_file`:
each video is decoded and encoded once for all of its queries (`peft_vtg.inference.ground_queries`, window by window
for long videos), its lines are appended and flushed to disk as soon as it is done, and a rerun after an
interruption (even `kill -9`) skips the queries already written, after dropping a last line cut short by the kill.
Beside the output, `<output>.run.json` records what made its lines (the adapters' weights by sha256, the base model,
the sampling and decoding settings): a rerun with another adapter or other settings is refused rather than
appending lines of two different runs to one file.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from .data.annotations import PathLike, iter_json_lines, load_annotations
from .data.video import check_video_id, duration_mismatch, encoder_image_size, video_duration, warn_duration_mismatches
from .files import fsync_path, is_interrupted_write, read_json, write_json_atomic, write_text_atomic
from .locks import RunLock
from .inference import default_num_frames, ground_queries, long_video_window_seconds
from .submission import submission_lines


def read_query_file(path: PathLike, format: Optional[str] = None) -> list[dict[str, Any]]:
    """The queries to ground: JSON lines `{"qid", "vid", "query"}` (other keys, e.g. `duration`, are ignored), or any
    annotation file `load_annotations` reads (`format` as there). qids must be unique; errors name the line."""
    name = os.fspath(path)
    if format is None and name.lower().endswith(".jsonl"):
        rows, seen = [], set()
        for number, entry in iter_json_lines(name):
            where = f"{name}, line {number}"
            missing = [key for key in ("qid", "vid", "query") if key not in entry]
            if missing:
                raise ValueError(f"{where}: needs {missing} (a query line is {{\"qid\", \"vid\", \"query\"}}).")
            qid, vid, query = entry["qid"], entry["vid"], entry["query"]
            if isinstance(qid, bool) or not isinstance(qid, (str, int)) or isinstance(vid, bool) or not isinstance(
                    vid, (str, int)):
                raise ValueError(f"{where}: 'qid' and 'vid' must be strings or integers, got {qid!r}, {vid!r}.")
            if not isinstance(query, str) or not query.strip():
                raise ValueError(f"{where}: 'query' must be a non-empty sentence, got {query!r}.")
            if str(qid) in seen:
                raise ValueError(f"{where}: duplicate qid {qid!r}; every query needs its own id.")
            seen.add(str(qid))
            rows.append({"qid": str(qid), "vid": check_video_id(str(vid), where), "query": query.strip()})
        if not rows:
            raise ValueError(f"{name} holds no queries (the file is empty).")
        return rows
    return [{"qid": row["qid"], "vid": row["vid"], "query": row["query"]} for row in load_annotations(name, format)]


def video_paths(videos: PathLike, vids: Sequence[str], suffix: str = ".mp4") -> dict[str, str]:
    """vid -> video file for every id of `vids`: `videos` is a directory of `<vid><suffix>` files or a text file
    listing one video path per line (the vid is the file name without its extension; a relative path is relative to
    the list file's directory, as in playlists and ffmpeg's concat lists, so the list works from any directory).
    Every id must have a file; the error lists those that do not."""
    name = os.fspath(videos)
    if os.path.isdir(name):
        found = {vid: os.path.join(name, vid + suffix) for vid in vids}
    elif os.path.isfile(name):
        found = {}
        with open(name, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                path = os.path.expanduser(line.strip())
                if not path:
                    continue
                path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(name)), path))
                vid = os.path.splitext(os.path.basename(path))[0]
                if vid in found and found[vid] != path:
                    raise ValueError(f"{name}, line {number}: two videos have the id {vid!r} ({found[vid]} and "
                                     f"{path}); give each video a distinct file name.")
                found[vid] = path
    else:
        raise FileNotFoundError(f"--videos {name}: no such directory or list file.")
    missing = sorted(vid for vid in dict.fromkeys(vids) if vid not in found or not os.path.isfile(found[vid]))
    if missing:
        where = "under" if os.path.isdir(name) else "listed in"
        relative = "" if os.path.isdir(name) else " (relative paths there are relative to the list file's directory)"
        raise FileNotFoundError(f"{len(missing)} queried video(s) have no file {where} {name}{relative}: "
                                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}.")
    return {vid: found[vid] for vid in vids}


def written_qids(output: PathLike, rows: Optional[Sequence[Mapping[str, Any]]] = None) -> set[str]:
    """The qids already in an output file of an earlier, interrupted run. Lines are written whole and flushed one
    video at a time, so only a last line without its newline can be cut short (by a kill): it is removed, and the file
    is whole again before new lines are appended. Anything else is an error, raised before the file is touched: a
    line that is not a prediction (`qid` and `pred_relevant_windows`: e.g. the queries file itself given as the
    output), and, with the run's `rows`, a prediction for a qid they do not hold or for another query text (the
    output of another run)."""
    name = os.fspath(output)
    if not os.path.exists(name):
        return set()
    with open(name, encoding="utf-8") as handle:
        text = handle.read()
    queries = {str(row["qid"]): row["query"] for row in rows or []}
    complete = text[: text.rfind("\n") + 1]  # up to the last newline: a cut-off tail is dropped
    qids: set[str] = set()
    kept_lines, repeated = [], []
    for number, line in enumerate(complete.splitlines(), start=1):
        if not line.strip():
            kept_lines.append(line)
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if not isinstance(entry, Mapping) or "qid" not in entry or \
                not isinstance(entry.get("pred_relevant_windows"), list):
            raise ValueError(f"{name}, line {number} is not a prediction line (qid and pred_relevant_windows), so the "
                             "file is not the output of an interrupted `peft-vtg predict` run; give another --output.")
        qid = str(entry["qid"])
        if rows is not None:
            query = queries.get(qid)
            if query is None or ("query" in entry and entry["query"] != query):
                why = "a qid the queries do not hold" if query is None else "another query text for this qid"
                raise ValueError(f"{name}, line {number} holds a prediction for {why} ({qid!r}): the file is the "
                                 "output of another run, not an interrupted run of this one; give another --output.")
        if qid in qids:  # two runs wrote the file at once (before runs were locked): keep the first line
            repeated.append(qid)
            continue
        qids.add(qid)
        kept_lines.append(line)
    if repeated:
        print(f"note: {name} held {len(repeated)} repeated prediction line(s) (qids {repeated[:5]}"
              f"{' ...' if len(repeated) > 5 else ''}), written by two runs at once; the first of each is kept.",
              file=sys.stderr)
        complete = "".join(line + "\n" for line in kept_lines)
    if complete != text:
        write_text_atomic(name, complete)
    return qids


RUN_RECORD_SUFFIX = ".run.json"
RUN_RECORD_FORMAT = "peft_vtg-predictions-run"


def adapter_sha256(model: Any, adapter_name: str) -> str:
    """The sha256 of one adapter's tensors as `save_pretrained` would write them (names, dtypes, shapes and bytes, in
    name order): the same for the adapter however it was loaded, different after any training step."""
    from peft.utils import get_peft_model_state_dict

    digest = hashlib.sha256()
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def run_record(model: Any, ground_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What a predictions file's lines depend on: each adapter's name, base model and weights (`adapter_sha256`) and
    every setting of `ground_queries`, given or default (a setting that is not JSON, e.g. an image processor, by its
    type)."""
    defaults = {name: parameter.default for name, parameter in inspect.signature(ground_queries).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    ground_kwargs = {**defaults, **ground_kwargs}
    # The values in effect, not the words used for them: leaving out --image-size (the encoder's own) or
    # --num-frames (the adapter's trained frames) is the same run as giving them.
    adapter_names = ground_kwargs.get("adapter_names")
    if ground_kwargs["image_size"] is None and ground_kwargs["processor"] is None:
        ground_kwargs["image_size"] = encoder_image_size(model.base_model.model.vtg_prompts.bound)
    if ground_kwargs["num_frames"] is None and ground_kwargs["fps"] is None:
        ground_kwargs["num_frames"] = default_num_frames(model, adapter_names)
    if ground_kwargs["window_seconds"] is None:
        ground_kwargs["window_seconds"] = long_video_window_seconds(model, None, adapter_names)
    names = adapter_names or [model.active_adapter]
    adapters = [{"name": name, "base_model": getattr(model.peft_config[name], "base_model_name_or_path", None),
                 "sha256": adapter_sha256(model, name)} for name in names]
    settings = {}
    for key, value in sorted(ground_kwargs.items()):
        if key in ("adapter_names", "disable_tqdm", "query_batch_size", "window_batch_size"):
            continue  # batch sizes change speed and memory, not the predictions
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            value = f"<{type(value).__module__}.{type(value).__qualname__}>"
        settings[key] = list(value) if isinstance(value, tuple) else value
    return {"format": RUN_RECORD_FORMAT, "adapters": adapters, "settings": settings}


def _describe_adapters(adapters: Any) -> str:
    """'name (sha256 0123456789ab), ...' of a run record's adapters, for messages."""
    if not isinstance(adapters, list) or not adapters:
        return "none"
    return ", ".join(f"{a.get('name')} (sha256 {str(a.get('sha256'))[:12]})" if isinstance(a, Mapping) else repr(a)
                     for a in adapters)


def _check_run_record(output: str, record: Mapping[str, Any], has_predictions: bool) -> None:
    """Refuse, before the output is touched, a resume whose adapters or settings differ from those recorded beside
    the output; a record without a predictions file (a run that wrote nothing) is replaced."""
    path = output + RUN_RECORD_SUFFIX
    if not has_predictions or not os.path.exists(path):
        if has_predictions:
            print(f"note: {output} has no {os.path.basename(path)} (written by an older peft_vtg, or removed), so "
                  "this resume cannot check that its adapter and settings are those of the lines already there.",
                  file=sys.stderr)
        return
    recorded = read_json(path, f"it records how {output} was made. Give another --output, or delete both files to "
                               "start again.")
    if not isinstance(recorded, Mapping) or recorded.get("format") != RUN_RECORD_FORMAT:
        raise ValueError(f"{path} is not a peft_vtg predictions run record; give another --output.")
    differences = []
    old, new = recorded.get("adapters"), record["adapters"]
    if old != new:
        differences.append(f"adapters: file {_describe_adapters(old)}, now {_describe_adapters(new)}")
    old_settings, new_settings = recorded.get("settings") or {}, record["settings"]
    for key in sorted(set(old_settings) | set(new_settings)):
        if old_settings.get(key) != new_settings.get(key):
            differences.append(f"{key}: file {old_settings.get(key)!r}, now {new_settings.get(key)!r}")
    if differences:
        raise ValueError(f"{output} holds predictions of another run ({'; '.join(differences)}). Rerun with the "
                         "same adapters and settings to resume it, or give another --output.")


def predict_to_file(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    paths: Mapping[str, str],
    output: PathLike,
    disable_tqdm: bool = False,
    **ground_kwargs: Any,
) -> dict[str, int]:
    """Ground every row's query in its video and append the submission lines to `output`, video by video.

    Args:
        rows: `{"qid", "vid", "query"}` (`read_query_file`).
        paths: vid -> video file (`video_paths`).
        ground_kwargs: what `ground_queries` takes (top_k, num_frames, return_saliency, window_seconds, ...).

    Returns:
        `{"written": lines written now, "resumed": queries found done, "videos": videos decoded now}`.

    Raises:
        ValueError: before the file is touched, when `output` is not the output of an interrupted run of this one
            (`written_qids`), or was written with other adapters or settings (recorded in `<output>.run.json`).
    """
    output = os.fspath(output)
    record = run_record(model, ground_kwargs)
    # One run per output file: two would each append the queries they found missing, and the file would hold both.
    lock = RunLock(os.path.dirname(os.path.abspath(output)), name=f".{os.path.basename(output)}.lock",
                   what="predict run", target=output, flag="--output").acquire()
    try:
        _remove_own_temporaries(output)
        has_predictions = os.path.exists(output) and os.path.getsize(output) > 0
        _check_run_record(output, record, has_predictions)
        done = written_qids(output, rows)
        write_json_atomic(output + RUN_RECORD_SUFFIX, record)  # before the first line: no line without its record
        return _append_predictions(model, tokenizer, rows, paths, output, done, disable_tqdm, ground_kwargs)
    finally:
        lock.release()


def _remove_own_temporaries(output: str) -> None:
    """Leftovers of a killed run's atomic writes of `output` or its run record (`<name>.tmp-<pid>`); the directory
    may hold other files, so only these names are removed."""
    directory = os.path.dirname(os.path.abspath(output))
    own = (os.path.basename(output), os.path.basename(output) + RUN_RECORD_SUFFIX)
    for name in os.listdir(directory):
        if is_interrupted_write(name) and name.rsplit(".tmp-", 1)[0] in own:
            os.remove(os.path.join(directory, name))


def _append_predictions(model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]], paths: Mapping[str, str],
                        output: str, done: set[str], disable_tqdm: bool,
                        ground_kwargs: Mapping[str, Any]) -> dict[str, int]:
    """`predict_to_file`'s work once the output is locked and checked: the rows not `done`, video by video."""
    by_video: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["qid"] not in done:
            by_video.setdefault(row["vid"], []).append(row)
    written = 0
    progress = tqdm(total=sum(len(v) for v in by_video.values()), unit="query", desc="predicting",
                    disable=disable_tqdm)
    try:
        with open(output, "a", encoding="utf-8") as handle:
            for vid, video_rows in by_video.items():
                items = _ground_video(model, tokenizer, paths[vid], video_rows, ground_kwargs)
                moments = {qid: found for qid, found, _ in items}
                saliency = {qid: scores for qid, _, scores in items if scores is not None}
                handle.write("".join(submission_lines(moments, saliency or None, video_rows)))
                handle.flush()
                os.fsync(handle.fileno())  # a kill after this keeps the video's lines
                written += len(video_rows)
                progress.update(len(video_rows))
    finally:
        progress.close()
    fsync_path(os.path.dirname(os.path.abspath(output)))
    return {"written": written, "resumed": len(done & {row["qid"] for row in rows}), "videos": len(by_video)}


def ground_rows_by_video(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    paths: Mapping[str, str],
    process_index: int = 0,
    num_processes: int = 1,
    disable_tqdm: bool = False,
    **ground_kwargs: Any,
) -> list[tuple[str, list[tuple[float, float, float]], Optional[list[float]]]]:
    """Ground every row's query in its video file, each video decoded once for all of its queries
    (`ground_queries`: window by window for long videos); what `peft-vtg evaluate` runs for videos longer than the
    adapter's window.

    Args:
        rows: `{"qid", "vid", "query"}`; paths: vid -> video file.
        process_index, num_processes: this process takes every `num_processes`-th video from `process_index` on
            (distributed evaluation; gather the results).
        ground_kwargs: what `ground_queries` takes.

    Returns:
        `(qid, moments, per-clip saliency scores or None)` for the rows of this process's videos.
    """
    by_video: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_video.setdefault(row["vid"], []).append(row)
    mine = list(by_video)[process_index::num_processes]
    # As the single pass does: an annotated duration far from the file's is named (the windows' spans are in the
    # file's seconds, the ground truth in the annotation's).
    mismatches = []
    for vid in mine:
        annotated = by_video[vid][0].get("duration")
        if annotated is not None:
            seconds = video_duration(paths[vid])
            if duration_mismatch(float(annotated), seconds):
                mismatches.append((vid, float(annotated), seconds))
    warn_duration_mismatches(mismatches)
    items = []
    for vid in tqdm(mine, unit="video", desc="grounding long videos", disable=disable_tqdm, leave=False):
        quiet = {**ground_kwargs, "disable_tqdm": True}  # one bar over the videos, not one per video
        items.extend(_ground_video(model, tokenizer, paths[vid], by_video[vid], quiet))
    return items


def _ground_video(model: Any, tokenizer: Any, path: str, video_rows: Sequence[Mapping[str, Any]],
                  ground_kwargs: Mapping[str, Any]) -> list[tuple[str, list, Optional[list[float]]]]:
    """`(qid, moments, per-clip saliency scores or None)` for the rows of one video file (`ground_queries`)."""
    results = ground_queries(model, path, [row["query"] for row in video_rows], tokenizer, **ground_kwargs)
    return [(row["qid"], result.moments, [score for _, _, score in result.saliency]) if hasattr(result, "moments")
            else (row["qid"], result, None) for row, result in zip(video_rows, results)]
