from axon.model.init import initialize_parameters
from axon.model.llama import Llama

__all__ = ["Llama", "initialize_parameters"]
