"""The run configuration: typed sections (schema), YAML loading and `--set` overrides (loading),
the checks on its values and against the world (checks), and ConfigError (errors).

Every check a user's input can fail runs before any collective; each failure is one
ConfigError sentence naming the key and the numbers.
"""

from axon.config.checks import check_data_source, check_layout, check_values, micro_batch_plan, setup_from_sections, training_setup
from axon.config.errors import ConfigError, config_errors
from axon.config.loading import (apply_override, build_config, build_section, check_init_weights, load_config,
                                 reject_unknown)
from axon.config.schema import (TOP_LEVEL_KEYS, DataConfig, GoldfishSection, OverlapSection, RunConfig,
                                TrainConfig)

__all__ = ["ConfigError", "DataConfig", "GoldfishSection", "OverlapSection", "RunConfig", "TOP_LEVEL_KEYS",
           "TrainConfig", "apply_override", "build_config", "build_section", "check_data_source", "check_init_weights", "check_layout", "check_values",
           "config_errors", "load_config", "micro_batch_plan", "reject_unknown", "setup_from_sections",
           "training_setup"]
