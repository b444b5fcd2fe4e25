"""The engine's only clients of perfmodel: choosing a layout (auto_layout), scaling studies
(scaling/) and the dry run beside the model's prediction (dry_run/)."""
