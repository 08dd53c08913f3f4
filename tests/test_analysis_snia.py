"""The Ia template's time of maximum (darkroom.analysis.snia) against simulated truth."""

from __future__ import annotations

import numpy as np

from darkroom.analysis.snia import band_shapes, fit_snia_peak


def test_redder_bands_peak_later_as_type_ia_do():
    # Ia maxima: B first, r about 1-2 d later, i later still (Contardo et al. 2000)
    peak = {b: band_shapes(b)[0][np.argmax(band_shapes(b)[1])] for b in ("g", "r", "i")}
    assert -1.0 < peak["g"] < 1.5
    assert 0.5 < peak["r"] - peak["g"] < 3.0
    assert peak["i"] < peak["r"] or peak["i"] - peak["r"] < 3.0
    assert band_shapes("ZTF_r") is not None and band_shapes("Halpha") is None


def test_maximum_in_a_gap_is_found_from_both_sides():
    """ZTF-like sampling (g and R every 3 d) with the maximum inside a 12 d gap: the template
    puts it within 1 d of the truth, where the brightest epoch is 6 d off."""
    rng = np.random.default_rng(3)
    t_max, stretch = 60000.0, 1.08
    errors = []
    for _trial in range(20):
        t = np.arange(t_max - 25, t_max + 45, 3.0) + rng.uniform(-0.3, 0.3)
        t = t[(t < t_max - 6) | (t > t_max + 6)]  # the weeks of the maximum were lost to weather
        band = np.where(np.arange(t.size) % 2 == 0, "g", "R")
        x = np.empty(t.size)
        for b, amp in (("g", 1000.0), ("R", 900.0)):
            days, rel = band_shapes(b)
            sel = band == b
            x[sel] = amp * np.interp((t[sel] - t_max) / stretch, days, rel, left=0.0)
        sig = 20.0 + 0.02 * x
        x_obs = x + rng.normal(0, sig)
        peaks = fit_snia_peak(t, x_obs, sig, band, band, t_guess=float(t[np.argmax(x_obs)]))
        days, rel = band_shapes("g")
        errors.append(peaks["g"] - (t_max + stretch * days[np.argmax(rel)]))
    assert np.median(np.abs(errors)) < 1.0, errors
    assert np.max(np.abs(errors)) < 3.0, errors


def test_no_known_band_no_answer():
    t = np.arange(10.0)
    assert fit_snia_peak(t, np.ones(10), np.ones(10), np.array(["Ha"] * 10), np.zeros(10), 5.0) == {}
