"""The job's lifecycle: start-up (bootstrap), the training run and its loop, health and
hang detection, preemption, metrics, and diagnosis after a failure."""
