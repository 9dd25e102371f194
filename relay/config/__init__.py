# The config: TOML in, typed and validated values out; SIGHUP reload.
