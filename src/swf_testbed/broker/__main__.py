"""``python -m swf_testbed.broker [OPTIONS]`` is ``swf-testbed broker [OPTIONS]``."""

import sys

from swf_testbed.cli import app

app(args=["broker", *sys.argv[1:]], prog_name="swf-testbed")
