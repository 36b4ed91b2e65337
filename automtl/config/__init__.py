"""The search-space file: its schema (:mod:`automtl.config.schema`) and how files and ``--set`` overrides
are read into it (:mod:`automtl.config.files`).

A file is YAML (see ``search_spaces/``). ``--set key.sub=value`` overrides any
field before validation.
"""

from automtl.config.files import coerce, describe, load, parse_override, read_yaml, validate
from automtl.config.schema import (
    DEVICES, IN_MEMORY, LOSS_METHODS, OBJECTIVES, RESUMABLE, SEED_STRATEGY, BackendConfig, DataConfig,
    DenseSettings, DistillationConfig, FineTuneSettings, FocusConfig, GradualConfig, LatencyConfig,
    LossWeightsConfig, ModelConfig, OptimizerConfig, PlanConfig, ProblemConfig, PruningConfig, Range, RungsConfig,
    SamplerConfig, SearchConfig, TrackingConfig, TrainSettings)

__all__ = ["coerce", "describe", "load", "parse_override", "read_yaml", "validate",
           "DEVICES", "IN_MEMORY", "LOSS_METHODS", "OBJECTIVES", "RESUMABLE", "SEED_STRATEGY", "BackendConfig",
           "DataConfig", "DenseSettings", "DistillationConfig", "FineTuneSettings", "FocusConfig",
           "GradualConfig", "LatencyConfig", "LossWeightsConfig", "ModelConfig", "OptimizerConfig",
           "PlanConfig", "ProblemConfig", "PruningConfig", "Range", "RungsConfig", "SamplerConfig",
           "SearchConfig", "TrackingConfig", "TrainSettings"]
