# Every module of bouncer that touches the network, the disk or the clock lives here.
"""bouncer's I/O: the SMTP server, routes and MX, remote sessions, the queue, logs and the CLI."""

__version__ = "0.1.0"  # the one place; pyproject.toml reads it (tool.setuptools.dynamic)
