"""axon: train Llama-style models over data x pipe x depth x row x col process grids."""

__version__ = "0.1.0"
