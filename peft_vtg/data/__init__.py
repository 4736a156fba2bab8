"""Data: benchmark annotation readers, video sources (pre-extracted features, decoded video), batching."""

from .annotations import (
    MOMENT_FEATURES,
    PUBLISHED_SPLIT_SIZES,
    ReadReport,
    check_split_size,
    detect_format,
    load_annotations,
    read_activitynet_captions,
    read_charades_durations,
    read_charades_sta,
    read_moment_jsonl,
    read_qvhighlights,
    read_report,
    read_tacos,
)
from .collate import GroundingCollator
from .video import (
    FeatureDirectory,
    H5FeatureFile,
    VideoFiles,
    decode_video,
    load_feature_file,
    preprocess_frames,
    resample_features,
    sample_times,
)

__all__ = [
    "FeatureDirectory",
    "GroundingCollator",
    "H5FeatureFile",
    "VideoFiles",
    "decode_video",
    "load_feature_file",
    "preprocess_frames",
    "resample_features",
    "sample_times",
    "MOMENT_FEATURES",
    "PUBLISHED_SPLIT_SIZES",
    "ReadReport",
    "check_split_size",
    "detect_format",
    "load_annotations",
    "read_activitynet_captions",
    "read_charades_durations",
    "read_charades_sta",
    "read_moment_jsonl",
    "read_qvhighlights",
    "read_report",
    "read_tacos",
]
