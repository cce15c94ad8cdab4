"""Carrying out a launch: facts (preflight, reach), the job kinds (``kinds``), staging, execution, the fine-tuning
observer (``recipe_run``), fetches from hosts, cleaning hosts. Imports the layers below it and ``remote``."""
