"""What runs workflows: the ``Run`` handle and its history, state, usage, waits and live
output; one claim's fenced execution; the worker, the reconciler and inline runs."""
