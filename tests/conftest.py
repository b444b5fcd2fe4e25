import sys
from pathlib import Path

# Tests import the repository's packages (and benchmarks.plain_llama) from a plain checkout too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
