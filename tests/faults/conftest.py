"""Hypothesis settings for the fault tests: derandomized and bounded, so CI is reproducible.

Every test here draws from a fixed seed (derandomize) and a bounded number of examples;
nothing is stored between runs (no example database), so a run depends on the code only.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "faults",
    derandomize=True,
    database=None,
    max_examples=150,
    deadline=None,  # qemu-free but a slow CI box must not fail on timing alone
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("faults")


# The `reliability` fixture the tests here declare their rows with: tests/reliability.py.
