"""The simulator-vs-real-homes comparison (bench.realism) on synthetic lines."""

from __future__ import annotations

import numpy as np
import pytest

from mimamori.bench import realism
from mimamori.detector import model as m

pytestmark = pytest.mark.unit

H = 3600.0


def test_home_figures_count_naps_nights_outings_and_dropouts() -> None:
    rows = []
    for d in range(4):
        mid = d * 86400.0
        # up at 07:00, an event every 20 minutes until 13:00, out until 14:30, then events until 22:00
        rows += [(mid + 7 * H + k * 1200, 0) for k in range(18)] + [(mid + 15 * H + k * 1200, 0) for k in range(21)]
        rows += [(mid + 3 * H, 0)]  # one night visit
        rows += [(mid + 13 * H, 1), (mid + 14.5 * H, 0)]  # the front door after lunch, back 1.5 h later
        if d != 2:
            rows += [(mid + 15 * H + k * 600, 2) for k in range(30)]  # a third sensor, silent on day 2
    arr = np.array(sorted(rows))
    kinds = np.array([m.DEV_MOTION, m.DEV_DOOR, m.DEV_MOTION], np.int8)
    f = realism.home_figures(arr[:, 0], arr[:, 1].astype(int), np.full(len(arr), m.EV_MOTION), kinds)
    assert f["nap_per_day"] >= 0.9 and f["outings_per_day"] >= 0.9
    assert 1.0 <= f["outing_median_h"] <= 1.6
    assert f["night_visits_per_night"] >= 0.9 and f["sensor_dropout_days_per_day"] > 0
    assert f["devices"] == ["door", "motion"]
    table = realism.table({"real": [{"home": "x", **f}], "simulated": realism.summarise([{"home": "y", **f}])})
    assert table.splitlines()[0].startswith("| figure | x |") and "nap_per_day" in table
