"""Chaos tests: worker processes killed, connections cut, the server restarted mid-load.

The short version runs with the test suite (``test_chaos.py``); the long one is
``make chaos`` (``python -m tests.chaos --long``). Scenarios and checks: ``harness``.
"""
