"""What runs workflows: the ``Run`` handle and its history, state, usage, waits and live
output; one claim's fenced execution; the leases that keep claims and the context
executions share; the worker, the reconciler and inline runs."""
