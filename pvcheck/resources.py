"""Files shipped inside the package: the templates, the lab, the shipped configs.

Found through importlib.resources, so they are where the package is, installed or in the
repository (where pvcheck/templates, pvcheck/labdata and pvcheck/deployments link to the
top-level folders; resolved, so paths shown to people are the real ones).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped(*parts: str) -> Path:
    return Path(str(files("pvcheck").joinpath(*parts))).resolve()


TEMPLATES = shipped("templates")
LAB = shipped("labdata")
DEPLOYMENTS = shipped("deployments")
