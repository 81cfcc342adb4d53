"""Suite-wide settings: hypothesis profiles tuned for a loaded 2-core CI machine."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Timing-based health checks and deadlines measure the machine, not the code: a
# broker and three services share these two cores during the run.
settings.register_profile(
    "crmsync", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "crmsync"))
