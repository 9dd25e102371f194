"""bouncer's I/O: the SMTP server, routes and MX, remote sessions, the queue, logs and the CLI."""
