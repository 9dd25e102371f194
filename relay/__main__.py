# `python -m relay` runs the bouncer command; nothing else belongs here.
from relay.cli.main import main

raise SystemExit(main())
