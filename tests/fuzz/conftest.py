"""Hypothesis profiles of the fuzz harness.

`fuzz-ci` (the default here): a fixed number of examples per target, derandomized, so the normal test run is
reproducible and bounded. `fuzz-long`: many random examples, for a hunt:
`python -m pytest tests/fuzz --hypothesis-profile=fuzz-long --hypothesis-show-statistics` (docs/security.md).
"""

from hypothesis import HealthCheck, settings

SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile("fuzz-ci", max_examples=100, derandomize=True, deadline=None, database=None,
                          suppress_health_check=SUPPRESSED, print_blob=True)
settings.register_profile("fuzz-long", max_examples=3000, deadline=None, suppress_health_check=SUPPRESSED,
                          print_blob=True)
if settings.get_current_profile_name() == "default":
    settings.load_profile("fuzz-ci")
