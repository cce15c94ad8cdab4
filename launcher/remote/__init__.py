"""Programs that run on the hosts, sent as source and run with the host's own Python: the standard library only,
and nothing of mxft outside this package (a test checks both). Each is a real module with its own tests."""
