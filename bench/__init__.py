"""Benchmarks of shipflow, run together by `python -m bench.run_all`.

Each benchmark module exposes `main() -> dict`: it runs with its own real servers,
prints its results as markdown and returns them. `bench.run_all` puts the markdown
(the returned `"markdown"` entry if there is one, else what `main` printed) into
`docs/benchmarks.md`, together with the command, the machine and the date, so that
every number in that file can be reproduced and judged against the hardware it ran on.
"""
