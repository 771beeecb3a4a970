"""Hypothesis profiles: reproducible in CI, random for a long hunt.

    ci    (tests/run, or CI set in the environment) derandomize=True: the same examples on
          every run, so a failure in CI fails again on a developer's machine
    dev   (plain pytest) random draws, as Hypothesis does by default
    hunt  random draws, HUNT_SCALE times the examples of every property and fuzz test:

          HYPOTHESIS_PROFILE=hunt .venv-pypi/bin/python -m pytest -p no:cacheprovider \
              tests/test_fuzz.py tests/test_desired_properties.py tests/test_planner_properties.py

A test file's own `settings(max_examples=...)` overrides a profile's, so the files size their
examples with `examples(n)`: n, or n x HUNT_SCALE in the hunt (MARGO_LITE_FUZZ_SCALE still
multiplies on top, for an even longer one).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

HUNT_SCALE = 50
PROFILES = ("ci", "dev", "hunt")

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.register_profile(
    "hunt", derandomize=False, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)


def profile_name(environ: os._Environ[str] | dict[str, str] = os.environ) -> str:
    """HYPOTHESIS_PROFILE if set; "ci" when CI is set (as CI services do); else "dev"."""
    name = environ.get("HYPOTHESIS_PROFILE") or ("ci" if environ.get("CI") else "dev")
    if name not in PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE={name!r}: use one of {', '.join(PROFILES)}")
    return name


def load() -> str:
    name = profile_name()
    settings.load_profile(name)
    return name


def examples(n: int) -> int:
    """The number of examples for a test that runs `n` in CI."""
    scale = int(os.environ.get("MARGO_LITE_FUZZ_SCALE", "1"))
    return n * scale * (HUNT_SCALE if profile_name() == "hunt" else 1)
