"""The run configuration's sections and their defaults: axon.spec.config_schema, where
perfmodel reads them too (`perfmodel plan --config`), so the engine and the planner share one copy."""

from axon.spec.config_schema import (TOP_LEVEL_KEYS, DataConfig, GoldfishSection, OverlapSection, RunConfig,
                                     TrainConfig)

__all__ = ["DataConfig", "GoldfishSection", "OverlapSection", "RunConfig", "TOP_LEVEL_KEYS", "TrainConfig"]
