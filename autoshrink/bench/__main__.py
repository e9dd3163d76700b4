"""`python -m autoshrink.bench`: the reference benchmark (bench/reference.py)."""
from autoshrink.bench.reference import main

raise SystemExit(main())
