"""The collection core: the one way ptqengine runs a model over data.

- device.py: `cpu` / `cuda:N`, checked before any work.
- session.py: every onnxruntime session, built for a device and a purpose (observe, reference, simulate,
  deploy).
- observe.py: which activations a statistics run sees and the model that exposes them.
- runner.py: a session run on feeds, output buffers bound once and reused (host or device memory).
- feed.py: samples of a data source stacked into the batches a model takes, prefetched.
- options.py: the run options every command shares.
- statistics.py: statistics runs (calibrate, shard workers, Horizon), CPU or GPU.
Commands (calibrate, quantize, analyze, evaluate, horizon, distributed) are built on these; nothing
else builds a session.
"""
from .device import CPU, Device, check_device, parse_device
from .feed import Batch, BatchStream, run_batch_size
from .observe import VALUE_PRESERVING_OPS, Observation, plan_observation, value_preserving_copies
from .options import RunOptions
from .runner import Runner
from .session import Purpose, create_session, model_sessions
from .statistics import Collected, StatisticsCollector

__all__ = ["CPU", "Batch", "BatchStream", "Collected", "Device", "Observation", "Purpose", "RunOptions", "Runner",
           "StatisticsCollector", "VALUE_PRESERVING_OPS", "check_device", "create_session", "model_sessions", "parse_device",
           "plan_observation", "run_batch_size", "value_preserving_copies"]
