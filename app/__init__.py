"""The `pvcheck` command line: above the library (pvcheck/) and the flows, never below them."""
