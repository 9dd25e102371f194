# The `bouncer` command: argument parsing and one module per subcommand.
