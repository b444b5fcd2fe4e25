import signal
import sys

from perfmodel.cli import main

signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `plan ... | head` ends quietly
sys.exit(main())
