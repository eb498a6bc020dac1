"""pvcheck's benchmark (run on the lab): `python -m bench.bench`, results in bench/RESULTS.md."""
