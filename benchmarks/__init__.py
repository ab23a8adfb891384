"""Side-by-side benchmarks of budget_plugins' guards (``python -m benchmarks``).

Each measurement times its variants alternately in one process (A B, B A, ...),
repeats the rounds, and reports the median ratio to the baseline with its
spread; nothing here asserts absolute times. Results go to
``benchmarks/RESULTS.md`` with a description of the machine.
"""
