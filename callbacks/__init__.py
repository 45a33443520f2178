"""Callbacks: the loop's observers (progress, early stopping, monitors) and loggers."""

from .base import Callback, MissingMetricError
from .view import TrainerView
from .early_stopping import EarlyStopping, EarlyStoppingReason
from .finetuning import BackboneFinetuning, BaseFinetuning
from .gradient_accumulation_scheduler import GradientAccumulationScheduler
from .lambda_function import LambdaCallback
from .logger import CSVLogger, Logger
from .lr_monitor import LearningRateMonitor
from .model_checkpoint import ModelCheckpoint
from .on_exception_checkpoint import OnExceptionCheckpoint
from .prediction_writer import BasePredictionWriter
from .ray_train import RayTrainReportCallback
from .model_summary import ModelSummary
from .monitors import DeviceStatsMonitor, ThroughputMonitor, Timer
from .progress import ProgressBar
from .spike_detection import SpikeDetection, TrainingSpikeError
from .stochastic_weight_avg import StochasticWeightAveraging
from .trackers import MLflowLogger, TensorBoardLogger, WandbLogger
from .batch_size_finder import BatchSizeFinder
from .lr_finder import LearningRateFinder
from .weight_averaging import EMAWeightAveraging, WeightAveraging

__all__ = ["BasePredictionWriter", "CSVLogger", "Callback", "MissingMetricError", "EarlyStopping", "LambdaCallback", "LearningRateFinder", "BatchSizeFinder", "SpikeDetection", "TrainingSpikeError", "StochasticWeightAveraging", "WeightAveraging", "EMAWeightAveraging", "BaseFinetuning", "BackboneFinetuning", "GradientAccumulationScheduler", "LearningRateMonitor", "Logger", "ModelCheckpoint", "ModelSummary", "ProgressBar",
           "TensorBoardLogger", "WandbLogger", "MLflowLogger", "ThroughputMonitor", "DeviceStatsMonitor", "Timer",
           "EarlyStoppingReason", "OnExceptionCheckpoint", "RayTrainReportCallback", "TrainerView"]
