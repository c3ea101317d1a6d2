"""`python -m gateway`: the same entry point as the `gateway` console script."""

from gateway.cli import main

raise SystemExit(main())
