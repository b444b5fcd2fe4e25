import os
import sys
from pathlib import Path

# Tests import the repository's packages (and axon.testing.reference_model) from a plain checkout too.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# Every `python -m axon ...` a test starts inherits this: a rank left waiting for a peer fails
# within 2 minutes (and the test with it) instead of after axon's 10-minute default.
os.environ.setdefault("AXON_COLLECTIVE_TIMEOUT_S", "120")
