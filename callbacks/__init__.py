"""Callbacks: the loop's observers (progress, early stopping, monitors) and loggers."""

from callbacks.base import Callback, MissingMetricError
from callbacks.early_stopping import EarlyStopping
from callbacks.logger import CSVLogger, Logger
from callbacks.lr_monitor import LearningRateMonitor
from callbacks.model_checkpoint import ModelCheckpoint
from callbacks.monitors import DeviceStatsMonitor, ThroughputMonitor, Timer
from callbacks.progress import ProgressBar
from callbacks.trackers import MLflowLogger, TensorBoardLogger, WandbLogger

__all__ = ["CSVLogger", "Callback", "MissingMetricError", "EarlyStopping", "LearningRateMonitor", "Logger", "ModelCheckpoint", "ProgressBar",
           "TensorBoardLogger", "WandbLogger", "MLflowLogger", "ThroughputMonitor", "DeviceStatsMonitor", "Timer"]
