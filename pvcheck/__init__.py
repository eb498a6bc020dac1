"""pvcheck: prove a Docker Swarm host is safe after its proxy overlay was recreated."""

__version__ = "0.1.0"
