"""Where tensors live and how gradients move: devices, precision, and (later) distributed strategies."""

from strategies.ddp import DDPStrategy
from strategies.deepspeed import DeepSpeedStrategy
from strategies.environment import ClusterEnvironment, detect_environment
from strategies.fsdp import FSDPStrategy
from strategies.precision import PRECISIONS, Precision
from strategies.registry import STRATEGIES, resolve_strategy
from strategies.strategy import SingleDeviceStrategy, Strategy

__all__ = ["ClusterEnvironment", "DDPStrategy", "DeepSpeedStrategy", "FSDPStrategy", "detect_environment", "PRECISIONS", "Precision", "STRATEGIES", "SingleDeviceStrategy", "Strategy", "resolve_strategy"]
