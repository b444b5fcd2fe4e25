"""The run configuration (moved from axon/config.py; split into modules next)."""

from axon.config.loading import (TOP_LEVEL_KEYS, ConfigError, DataConfig, GoldfishSection, OverlapSection, RunConfig,
                                 TrainConfig, apply_override, build_config, build_section, check_layout, load_config,
                                 micro_batch_plan, reject_unknown)
