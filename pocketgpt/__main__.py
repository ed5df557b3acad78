"""`python -m pocketgpt` == the `pocketgpt` console script."""

from pocketgpt.cli import main

raise SystemExit(main())
