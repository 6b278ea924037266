"""
The benchmark suite's shared code.

C{benchkit.rounds} is imported by every worker process, including those
running in a peer library's virtual environment, so it uses the standard
library alone.  The other modules run in the driver, C{bench/run.py}.
"""
