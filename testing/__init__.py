"""What the tests and the benchmarks share: real hosts in network namespaces (``netns``), a real Slurm on them
(``slurm``) and finding a run's processes (``processes``). Neither ``tests`` nor ``bench`` imports the other."""
