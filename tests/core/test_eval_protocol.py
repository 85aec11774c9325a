"""The protocol end to end on synthetic sets: folder layout, CLI, report files, and error messages."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mvcustom_core.cameras.formats import save_camera_file
from mvcustom_core.eval.__main__ import main
from mvcustom_core.eval.errors import EvalInputError
from mvcustom_core.eval.protocol import (EvalOptions, LearnedModels, evaluate_set, find_sets, load_set,
                                         METRIC_KEYS)
from mvcustom_core.eval.table import format_markdown, summarize
from mvcustom_core.synthetic import SyntheticScene, turntable_cameras


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def views():
    cams = turntable_cameras(36, elevation_deg=25.0, radius=2.5, image_size=(64, 80), fov_y_deg=45.0,
                             dtype=torch.float64)[[0, 1, 2, 3]]
    return cams, SyntheticScene(seed=2, max_frequency=4.0).render(cams)


def _write_set(folder, frames, cams, depth=None, prompt=None, references=None):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray((f.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(folder / f"frame_{i:03d}.png")
    save_camera_file(cams, folder / "transforms.json")
    if depth is not None:
        save_file({"depth": depth[:, 0].float().contiguous()}, str(folder / "depth.safetensors"))
    if prompt is not None:
        (folder / "prompt.txt").write_text(prompt)
    if references is not None:
        (folder / "references").mkdir()
        for i, r in enumerate(references):
            Image.fromarray((r.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / "references" / f"{i}.png")


class MeanColour:
    """A stand-in embedder: the mean colour of each image (identical images -> identical embeddings)."""

    def embed_images(self, images):
        return torch.nn.functional.normalize(images.float().mean((2, 3)), dim=-1)


def test_cli_writes_the_table_and_true_views_beat_shuffled_ones(views, tmp_path):
    cams, out = views
    order = [2, 0, 3, 1]
    _write_set(tmp_path / "root" / "true" / "s0", out.rgb, cams, out.depth, prompt="a toy")
    _write_set(tmp_path / "root" / "shuffled" / "s0", out.rgb[order], cams, out.depth[order])
    assert main([str(tmp_path / "root"), "--out", str(tmp_path / "report"), "--no-pose"]) == 0
    names = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert names == ["results.json", "sets.csv", "table.csv", "table.md"]  # no temp files left behind
    with open(tmp_path / "report" / "table.csv") as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    assert set(table) == {"true", "shuffled"}
    assert float(table["true"]["reproj_psnr_mean"]) > float(table["shuffled"]["reproj_psnr_mean"]) + 5
    assert float(table["true"]["reproj_psnr_mean"]) > 28
    assert table["true"]["cpa_mean"] == ""  # --no-pose: not computed, not zero
    md = (tmp_path / "report" / "table.md").read_text()
    assert md.splitlines()[0].startswith("| Method | CPA ↑ | MV consistency ↓ | Identity ↓ | Text align ↑ |")
    rows = json.loads((tmp_path / "report" / "results.json").read_text())
    assert {r["method"] for r in rows} == {"true", "shuffled"}
    assert "no local folder" in rows[0]["unavailable"]["clip"]


def test_loaded_set_matches_what_was_written(views, tmp_path):
    cams, out = views
    _write_set(tmp_path / "m" / "s", out.rgb, cams, out.depth, prompt=" red car \n",
               references=torch.rand(2, 3, 20, 30))
    (gen,) = find_sets(tmp_path)
    assert (gen.method, gen.name) == ("m", "s")
    data = load_set(gen)
    assert data["prompt"] == "red car"
    assert data["references"].shape == (2, 3, 64, 80)
    torch.testing.assert_close(data["frames"], out.rgb.float(), rtol=0, atol=0.5 / 255 + 1e-6)
    torch.testing.assert_close(data["cams"].c2w, cams.c2w, rtol=0, atol=1e-9)
    torch.testing.assert_close(data["cams"].K, cams.K, rtol=0, atol=1e-9)
    torch.testing.assert_close(data["depth"], out.depth.float())


def test_evaluate_set_learned_wiring(views):
    cams, out = views
    models = LearnedModels(clip=MeanColour())
    refs = out.rgb[:1].float()
    res = evaluate_set(out.rgb.float(), cams, depth=out.depth, references=torch.cat([refs, refs]),
                       options=EvalOptions(pose_accuracy=False), models=models)
    assert set(METRIC_KEYS) <= set(res)
    e = torch.nn.functional.normalize(out.rgb.float().mean((2, 3)), dim=-1)
    i, j = torch.triu_indices(4, 4, 1)
    assert res["mv_clip"] == pytest.approx(float((e[i] * e[j]).sum(-1).mean()), abs=1e-6)
    assert res["identity_clip"] == pytest.approx(float((e @ e[0]).mean()), abs=1e-6)
    assert math.isnan(res["cpa"]) and math.isnan(res["mv_dreamsim"])
    assert "text_clip_s" in res["unavailable"]


def test_bad_folders_name_the_file(views, tmp_path):
    cams, out = views
    with pytest.raises(EvalInputError, match="no generated set"):
        find_sets(tmp_path)
    _write_set(tmp_path / "m" / "s", out.rgb[:3], cams, out.depth)  # 3 frames, 4 cameras
    with pytest.raises(EvalInputError, match="transforms.json: 4 cameras for 3 frame PNGs"):
        load_set(find_sets(tmp_path)[0])
    with pytest.raises(EvalInputError, match="image size"):
        evaluate_set(out.rgb, cams.with_image_size((32, 40)), options=EvalOptions(pose_accuracy=False))


def test_summary_mean_and_std():
    rows = [{"method": "a", "cpa": 1.0, "rot_err_deg": 2.0}, {"method": "a", "cpa": 0.5, "rot_err_deg": math.nan},
            {"method": "b", "cpa": 0.0}]
    s = {r["method"]: r for r in summarize(rows)}
    assert s["a"]["cpa"] == (0.75, 0.25, 2)
    assert s["a"]["rot_err_deg"] == (2.0, 0.0, 1)
    assert s["b"]["mv_dreamsim"][2] == 0
    md = format_markdown(summarize(rows))
    assert "| a | 0.750 (±0.25) | – |" in md


def test_folder_progress_interrupt_and_cli_errors(views, tmp_path, capsys):
    from mvcustom_core.eval.protocol import evaluate_folder

    cams, out = views
    for name in ("a", "b"):
        _write_set(tmp_path / "root" / "m" / name, out.rgb, cams)
    seen = []
    rows = evaluate_folder(tmp_path / "root", EvalOptions(pose_accuracy=False),
                           progress=lambda i, n, s: seen.append((i, n, s)))
    assert seen == [(1, 2, "m/a"), (2, 2, "m/b")]
    assert [r["set"] for r in rows] == ["a", "b"]
    assert "no depth" in rows[0]["unavailable"]["reprojection"]

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    with pytest.raises(Stop):
        evaluate_folder(tmp_path / "root", EvalOptions(pose_accuracy=False), check_interrupt=stop)
    assert main([str(tmp_path / "empty_missing"), "--out", str(tmp_path / "r")]) == 2
    assert "empty_missing: not a folder" in capsys.readouterr().err
