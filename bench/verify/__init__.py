"""`just verify`: every guarantee of the Job Orchestrator checked against a real server, in one command.

`python -m bench.verify` starts PostgreSQL (a scratch cluster of its own, or a fresh database on
`DATABASE_URL`), a gateway of two processes behind one port and the workers each check needs,
runs one check per guarantee, prints a table (guarantee, how it was checked, what was measured,
pass or FAIL) and exits non-zero when any check failed. `--quick` runs everything smaller.
"""


def main(argv: list[str] | None = None) -> int:
    # Imported here: worker processes import `bench.verify._handler`, and should carry only that.
    from ._cli import main as run

    return run(argv)


__all__ = ["main"]
