"""What tests and benchmarks share: the plain reference model (reference_model), one helper
that runs a function on N gloo processes (spawn), and one that starts whole `python -m axon`
jobs as a launcher would and waits for them (processes). Never imported by the engine."""
