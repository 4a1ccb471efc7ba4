"""Demo data and traffic for gridcase (issue 8).

- `directory.yaml`: the Bayannur demo directory (four communities, fictional staff).
- `policy-minutes.yaml`: the DESIGN §5 policy with clocks in minutes.
- `simulator`: city platforms and people on the ground, through the public contract only
  (`gridcase simulate`, or `python -m demo.simulator`).
"""
