# Everything under policy/ decides and never touches the network or the clock.
"""bouncer's decisions: pure functions over plain dataclasses.

Nothing in this package performs network I/O or reads the clock; time is
always a parameter. The LMDB suppression store is its one piece of I/O.
"""
