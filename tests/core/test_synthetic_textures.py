"""Wave textures: the band limit holds in the spectrum, not just in the parameters."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.synthetic.textures import make_wave_texture

D = torch.float64


def _line_spectrum(field, cap_probe_len=20.0, n=4096):
    """Hann-windowed power spectrum of ``field`` sampled along a fixed oblique line."""
    e = torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.8], dtype=D), dim=0)
    s = torch.arange(n, dtype=D) * (cap_probe_len / n)
    x = field(s[:, None] * e + torch.tensor([0.1, 0.2, 0.3], dtype=D))
    x = (x - x.mean(0)) * torch.hann_window(n, periodic=True, dtype=D)[:, None]
    return torch.fft.rfftfreq(n, d=cap_probe_len / n), torch.fft.rfft(x, dim=0).abs().pow(2).sum(-1)


@pytest.mark.parametrize("cap", [2.0, 16.0])
def test_logit_is_band_limited_and_albedo_nearly(cap):
    tex = make_wave_texture(torch.Generator().manual_seed(1), max_frequency=cap)
    assert (tex.frequencies <= cap).all() and len(tex.frequencies) >= 10
    # Along a unit-speed line a wave of frequency f has frequency f |<u, e>| <= f <= cap.
    freqs, power = _line_spectrum(tex.logit)
    above = freqs > cap * 1.02  # the Hann window leaks one bin (0.05 cycles/unit) each side
    assert power[above].sum() / power.sum() < 1e-8
    freqs, power = _line_spectrum(tex.albedo)
    assert power[above].sum() / power.sum() < 2e-3  # the sigmoid's harmonics (docstring claim)


def test_contrast_sets_the_logit_standard_deviation_and_albedo_stays_in_range():
    tex = make_wave_texture(torch.Generator().manual_seed(2), max_frequency=8.0, contrast=1.1)
    q = torch.rand(20000, 3, generator=torch.Generator().manual_seed(0), dtype=D) * 10
    std = tex.logit(q).std(dim=0)
    torch.testing.assert_close(std, torch.full((3,), 1.1, dtype=D), rtol=0.08, atol=0)
    rgb = tex.albedo(q)
    assert (rgb > 0).all() and (rgb < 1).all() and rgb.std(0).min() > 0.1


def test_seeded_and_a_lower_cap_keeps_the_same_low_waves():
    a = make_wave_texture(torch.Generator().manual_seed(3), max_frequency=16.0)
    b = make_wave_texture(torch.Generator().manual_seed(3), max_frequency=16.0)
    low = make_wave_texture(torch.Generator().manual_seed(3), max_frequency=4.0)
    assert torch.equal(a.logit(torch.ones(2, 3, dtype=D)), b.logit(torch.ones(2, 3, dtype=D)))
    keep = a.frequencies <= 4.0
    assert torch.equal(low.frequencies, a.frequencies[keep])
    assert torch.equal(low.directions, a.directions[keep]) and torch.equal(low.phases, a.phases[keep])


def test_cap_below_the_bank_raises():
    with pytest.raises(ValueError, match="max_frequency"):
        make_wave_texture(torch.Generator().manual_seed(0), max_frequency=0.2)
