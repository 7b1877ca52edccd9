"""The reliability suite's count lines: `scenario: sent N, accepted N, audited N, ...`.

A scenario appends its line to LINES; tests/faults/conftest.py moves it into its test's report
(under PROPERTY), which reaches the pytest process that prints from a pytest-xdist worker too;
tests/conftest.py prints them all at the end of the run.
"""

LINES: list[str] = []
PROPERTY = "reliability scenario"
