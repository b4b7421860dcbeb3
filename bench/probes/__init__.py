"""Adversarial probe families for `python -m bench.reliability`: one module per area, each with
`run(stack, work) -> dict` returning its figures (the names in bench/results/reliability.json).
A probe drives the real processes of a running stack (tests/services/conftest.py) as an outsider
would, counts what it tried and what got through, and leaves the stack usable for the next."""
