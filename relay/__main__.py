# `python -m relay` runs the bouncer command; nothing else belongs here.
from relay.cli import main

raise SystemExit(main())
