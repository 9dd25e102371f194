# Late bounce and complaint e-mails read into typed reports; no I/O.
