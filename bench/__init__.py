"""gridcase performance harness (`make bench` → `python -m bench`); see bench/README.md."""
