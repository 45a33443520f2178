"""Where tensors live and how gradients move: devices, precision, and (later) distributed strategies."""

from .ddp import DDPStrategy
from .deepspeed import DeepSpeedStrategy
from .environment import ClusterEnvironment, SLURMEnvironment, detect_environment
from .fsdp import FSDPStrategy
from .precision import PRECISIONS, Precision
from .registry import STRATEGIES, resolve_strategy
from .strategy import SingleDeviceStrategy, Strategy

__all__ = ["ClusterEnvironment", "DDPStrategy", "DeepSpeedStrategy", "FSDPStrategy", "SLURMEnvironment", "detect_environment", "PRECISIONS", "Precision", "STRATEGIES", "SingleDeviceStrategy", "Strategy", "resolve_strategy"]
