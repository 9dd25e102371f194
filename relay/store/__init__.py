# The one LMDB environment, its one writer thread and its integrity checks.
