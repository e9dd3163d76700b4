"""`python -m autoshrink.bench`: the reference benchmark (bench/reference_main.py)."""

from autoshrink.bench.reference_main import main

raise SystemExit(main())
