"""Human-effort arithmetic on constructed episodes."""

import numpy as np
import pytest

from data.effort import EpisodeEffort, count_takeovers, effort_figures, successes_gained_per_human_minute
from data.schema import ActionSource

P, C, H = int(ActionSource.POLICY), int(ActionSource.CORRECTION), int(ActionSource.HOLD)


@pytest.mark.parametrize("sources, n", [([], 0), ([P, P], 0), ([C, C, P], 1), ([P, C, C, P, C], 2),
                                        ([C, H, C], 2), ([P, C, C, C], 1)])
def test_takeovers_are_contiguous_correction_stretches(sources, n):
    assert count_takeovers(np.array(sources, np.uint8)) == n


def test_figures_per_robot_hour_and_return_on_human_effort():
    # two 1-hour episodes at 10 Hz: 6 takeovers, 1 minute of correction in all, one success
    eps = [EpisodeEffort(ticks=36000, correction_ticks=300, takeovers=4, fps=10.0, success=True),
           EpisodeEffort(ticks=36000, correction_ticks=300, takeovers=2, fps=10.0, success=False)]
    f = effort_figures(eps)
    assert f.robot_hours == pytest.approx(2.0) and f.human_minutes == pytest.approx(1.0)
    assert f.takeovers_per_robot_hour == pytest.approx(3.0)
    assert f.correction_tick_share == pytest.approx(600 / 72000)
    assert f.return_on_human_effort == pytest.approx(1 / 2.0)
    assert successes_gained_per_human_minute(f, baseline_success_rate=0.25) == pytest.approx(0.5)
    none = effort_figures([EpisodeEffort(100, 0, 0, 10.0, True)])
    assert none.return_on_human_effort == 1.0 and successes_gained_per_human_minute(none, 0.0) is None
    empty = effort_figures([])
    assert empty.takeovers_per_robot_hour == 0.0 and empty.correction_tick_share == 0.0
