"""CO3D frame annotations: PyTorch3D row-vector axes and NDC intrinsics by hand, round trips, errors."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.cameras.formats import PoseFileError, load_camera_file_with_meta, save_camera_file
from mvcustom_core.cameras.formats.co3d import co3d_from_list, co3d_to_list

F64 = torch.float64
CV_C2W = torch.tensor([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 5], [0, 0, 0, 1]], dtype=F64)
# Camera at (0,0,5) looking at the origin, image up = +y. OpenCV w2c: R_cv = diag(1,-1,-1), t_cv = (0,0,5).
# PyTorch3D: R = R_cvᵀ D = diag(-1, 1, -1), T = D t_cv = (0, 0, 5) with D = diag(-1,-1,1).
R_P3D = [[-1.0, 0, 0], [0, 1.0, 0], [0, 0, -1.0]]
T_P3D = [0.0, 0, 5]
# Image 100 x 200 (H x W), pixel K: f = 150, principal point (110, 40).
# ndc_isotropic: s = min(W, H)/2 = 50, f_ndc = 3, p_ndc = ((100 - 110)/50, (50 - 40)/50) = (-0.2, 0.2).
# ndc_norm_image_bounds: s = (100, 50), f_ndc = (1.5, 3), p_ndc = (-0.1, 0.2).
K_PX = torch.tensor([[150, 0, 110], [0, 150, 40], [0, 0, 1]], dtype=F64)


def _entry(seq="seq1", n=0, fmt="ndc_isotropic", f=(3.0, 3.0), p=(-0.2, 0.2), R=R_P3D, T=T_P3D, size=(100, 200)):
    return {"sequence_name": seq, "frame_number": n, "frame_timestamp": n / 30,
            "image": {"path": f"apple/{seq}/images/frame{n:06d}.jpg", "size": list(size)},
            "viewpoint": {"R": R, "T": T, "focal_length": list(f), "principal_point": list(p),
                          "intrinsics_format": fmt}}


@pytest.mark.parametrize("fmt, f, p", [("ndc_isotropic", (3.0, 3.0), (-0.2, 0.2)),
                                       ("ndc_norm_image_bounds", (1.5, 3.0), (-0.1, 0.2))])
def test_hand_derived_camera(fmt, f, p):
    cams, meta = co3d_from_list([_entry(fmt=fmt, f=f, p=p)])
    torch.testing.assert_close(cams.c2w[0], CV_C2W)
    torch.testing.assert_close(cams.K[0], K_PX)
    assert cams.image_size == (100, 200) and meta.intrinsics_format == fmt
    # Independent check with PyTorch3D's own projection: X_view = X @ R + T, x_ndc = f X/Z + p,
    # then NDC (+x left, +y up) to pixels u = W/2 − x_ndc s. World (1, 2, 0) -> view (-1, 2, 5).
    X = torch.tensor([1.0, 2.0, 0.0], dtype=F64)
    view = X @ torch.tensor(R_P3D, dtype=F64) + torch.tensor(T_P3D, dtype=F64)
    s = (50.0, 50.0) if fmt == "ndc_isotropic" else (100.0, 50.0)
    u = 100 - (f[0] * view[0] / view[2] + p[0]) * s[0]
    v = 50 - (f[1] * view[1] / view[2] + p[1]) * s[1]
    uv, z = cams.project(X[None])
    torch.testing.assert_close(uv[0, 0], torch.stack([u, v]))
    assert float(z[0, 0]) == pytest.approx(5.0)


def test_round_trip_jgz_with_meta(tmp_path, generator):
    eye = torch.randn(4, 3, generator=generator, dtype=F64) * 3
    cams = CameraSet.from_fov(look_at(eye, torch.zeros(3, dtype=F64)), 40.0, (90, 120))
    path = save_camera_file(cams, tmp_path / "frame_annotations.jgz")
    assert gzip.decompress(path.read_bytes())[:1] == b"["
    cf = load_camera_file_with_meta(path)
    assert cf.format == "co3d" and cf.meta.intrinsics_format == "ndc_isotropic"
    torch.testing.assert_close(cf.cameras.c2w, cams.c2w, rtol=0, atol=1e-12)
    torch.testing.assert_close(cf.cameras.K, cams.K, rtol=0, atol=1e-12)
    again = save_camera_file(cf.cameras, tmp_path / "again.json", format="co3d", meta=cf.meta)
    first, second = json.loads(gzip.decompress(path.read_bytes())), json.loads(again.read_text())
    for a, b in zip(first, second, strict=True):
        assert {k: v for k, v in a.items() if k != "viewpoint"} == {k: v for k, v in b.items() if k != "viewpoint"}
        for key in ("R", "T", "focal_length", "principal_point"):
            torch.testing.assert_close(torch.tensor(b["viewpoint"][key], dtype=F64),
                                       torch.tensor(a["viewpoint"][key], dtype=F64),
                                       rtol=0, atol=1e-12)


def test_entries_written_back_equal_the_input():
    entries = [_entry(n=0), _entry(n=5, fmt="ndc_isotropic")]
    cams, meta = co3d_from_list(entries)
    out = co3d_to_list(cams, meta)
    for a, b in zip(entries, out):
        assert a["image"] == b["image"] and a["frame_number"] == b["frame_number"]
        for key in ("R", "T", "focal_length", "principal_point"):
            torch.testing.assert_close(torch.tensor(b["viewpoint"][key], dtype=F64),
                                       torch.tensor(a["viewpoint"][key], dtype=F64), rtol=0, atol=1e-12)


def test_sequence_selection(tmp_path):
    entries = [_entry("seqA", 0), _entry("seqB", 0), _entry("seqA", 1)]
    with pytest.raises(PoseFileError, match="holds 2 sequences .*pass sequence="):
        co3d_from_list(entries)
    cams, meta = co3d_from_list(entries, sequence="seqA")
    assert len(cams) == 2 and meta.frame_numbers == (0, 1) and meta.sequence_name == "seqA"
    p = tmp_path / "frame_annotations.jgz"
    p.write_bytes(gzip.compress(json.dumps(entries).encode()))
    assert len(load_camera_file_with_meta(p, sequence="seqB").cameras) == 1


@pytest.mark.parametrize("bad, msg", [
    ({"fmt": "screen"}, r"\[1\].viewpoint.intrinsics_format 'screen'"),
    ({"f": (0.0, 3.0)}, r"\[1\] has a non-positive focal length"),
    ({"R": [[2.0, 0, 0], [0, 1.0, 0], [0, 0, -1.0]]}, r"\[1\] rotation is not orthonormal"),
    ({"R": [[1.0, 0], [0, 1.0, 0], [0, 0, 1.0]]}, r"\[1\].viewpoint.R: expected 3x3"),
    ({"T": [0, "x", 1]}, r"\[1\].viewpoint.T: value 1 is 'x'"),
    ({"p": (float("nan"), 0.0)}, r"\[1\]: intrinsics contains a non-finite"),
    ({"size": (0, 10)}, r"\[1\].image.size \[0, 10\] is not positive"),
])
def test_errors_name_file_and_entry(tmp_path, bad, msg):
    p = tmp_path / "frame_annotations.json"
    p.write_text(json.dumps([_entry(n=0), _entry(n=1, **bad)]))
    with pytest.raises(PoseFileError, match=msg) as e:
        load_camera_file_with_meta(p)
    assert str(p) in str(e.value)


def test_empty_and_garbage(tmp_path):
    p = tmp_path / "frame_annotations.jgz"
    p.write_bytes(gzip.compress(b"[]"))
    with pytest.raises(PoseFileError, match="non-empty JSON list"):
        load_camera_file_with_meta(p)
    p.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(PoseFileError, match="not a \\(gzipped\\) JSON list"):
        load_camera_file_with_meta(p)
