"""The job as the user wrote it: the job file's schema and reader (``jobspec``, ``yamlfields``) and the command
line's command mode (``command``). Imports nothing of mxft but ``cluster``."""
