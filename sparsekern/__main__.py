"""`python -m sparsekern` is the `sparsekern` command."""
from sparsekern.cli import main

raise SystemExit(main())
