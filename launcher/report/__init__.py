"""What a person reads while a run goes and after it: the console, the metrics files and their plot. Imports
``data`` (a run's records), ``spec`` and ``cluster`` only."""
