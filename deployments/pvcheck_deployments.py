"""Python entry point for pvcheck's Prefect deployments.

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/pvcheck_deployments.py CONFIG...

is the same as `pvcheck serve --config CONFIG ...` (which also starts a server when none is
set): the configs are pinned, one set of deployments each.
The deployments themselves are declared in flows/serving.py.
"""

from __future__ import annotations

import sys

from pvcheck.flows.serving import NIGHTLY_CRON, serve_all
from pvcheck.pinned import pin

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: pvcheck_deployments.py CONFIG [CONFIG ...]  (lab: lab/pvcheck.toml)")
    serve_all(pin(sys.argv[1:]), NIGHTLY_CRON, "UTC")
