"""Python entry point for pvcheck's Prefect deployments.

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/pvcheck_deployments.py CONFIG

is the same as `pvcheck serve --config CONFIG` (which also starts a server when none is set).
The deployments themselves are declared in flows/serving.py.
"""

from __future__ import annotations

import sys

from flows.serving import NIGHTLY_CRON, serve_all

if __name__ == "__main__":
    serve_all(sys.argv[1] if len(sys.argv) > 1 else "lab/pvcheck.toml", NIGHTLY_CRON, "UTC")
