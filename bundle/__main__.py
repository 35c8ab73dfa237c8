"""``python -m bundle`` is the ``ctv2v`` command."""

from bundle.cli import main

raise SystemExit(main())
