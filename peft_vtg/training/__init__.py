"""Training and evaluation: an accelerate loop (one CPU, one GPU or many), evaluation across processes, Trainer."""

from .arguments import VTGTrainingArguments
from .checkpoints import DamagedCheckpointError, SettingsChangedError
from .evaluation import GroundingPredictions, evaluate_grounding, grounding_metrics, predict_grounding, predict_moments
from .hf_trainer import GroundingTrainer
from .loop import TrainResult, release_process_group, train
from .module import EnsembleGroundingModule, GroundingModule
from .safety import NonFiniteError, OutputDirInUseError

__all__ = [
    "DamagedCheckpointError",
    "GroundingPredictions",
    "EnsembleGroundingModule",
    "GroundingModule",
    "GroundingTrainer",
    "NonFiniteError",
    "OutputDirInUseError",
    "SettingsChangedError",
    "TrainResult",
    "VTGTrainingArguments",
    "release_process_group",
    "evaluate_grounding",
    "grounding_metrics",
    "predict_grounding",
    "predict_moments",
    "train",
]
