"""Horizon Robotics PTQ kits: hb_mapper / hb_compile config, quant_config and calibration data.

`write_horizon_config(model, data, target, out_dir, ...)` writes, from our statistics, what Horizon's
converters need and users otherwise assemble by hand: config.yaml (keys valid for the target's march),
quant_config.json (J5, X5, J6), one directory of float32 calibration samples per input, and
ptq_summary.md explaining every choice. See schema.py for the sources of the facts used.
"""
from .choices import CalibrationChoice, Decision, TensorFacts
from .schema import MARCHES, TARGETS, validate_config, validate_quant_config
from .writer import HorizonResult, march_for, write_horizon_config

__all__ = [
    "CalibrationChoice",
    "Decision",
    "HorizonResult",
    "MARCHES",
    "TARGETS",
    "TensorFacts",
    "march_for",
    "validate_config",
    "validate_quant_config",
    "write_horizon_config",
]
