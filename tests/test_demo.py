"""The demo main job, shortened: every stage runs through `python -m invideo_jax.main` and the report appears."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shortened_demo_end_to_end(tmp_path):
    args = ("train=24,val=8,pretrain_steps=4,finetune_steps=4,multimodal_steps=4,multimodal_finetune_steps=4,"
            "fusion_steps=4,iv2_distill_steps=4,iv2_align_steps=4,iv2_finetune_steps=4,batch=8,workers=0")
    cmd = [sys.executable, "-m", "invideo_jax.main", f"--config=configs/demo.py:{args}", f"--workdir={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    for stage in ("pretrain", "finetune", "scratch", "multimodal", "multimodal_finetune", "fusion", "iv2_distill",
                  "iv2_align", "iv2_finetune"):
        with open(tmp_path / stage / "summary.json") as f:
            summary = json.load(f)
        assert summary["steps"] == 4
    for stage in ("finetune", "scratch", "multimodal_finetune", "fusion", "iv2_finetune"):
        with open(tmp_path / stage / "summary.json") as f:
            assert json.load(f)["eval"]["num_videos"] == 8  # every held-out video evaluated
    for stage in ("multimodal", "iv2_align"):
        with open(tmp_path / stage / "summary.json") as f:
            assert {"zero_shot/top1", "retrieval/t2v_r1", "retrieval_dsl/t2v_r1"} <= set(json.load(f)["eval"])
    with open(tmp_path / "iv2_align" / "summary.json") as f:
        assert json.load(f)["eval"]["retrieval_match/k"] == 16  # re-ranked by the matching head
    report = (tmp_path / "report.md").read_text()
    assert "| finetune | 4 |" in report and "| scratch | 4 |" in report
    assert "## Video-text evaluation" in report and "| multimodal |" in report and "| iv2_align |" in report
    for row in ("masked encoder alone | finetune", "multimodal encoder alone | multimodal_finetune",
                "late ensemble (softmax averaged) | ensemble", "cross-model attention fusion | fusion"):
        assert f"| {row} |" in report
    assert (tmp_path / "plot_loss.png").exists()
    # Re-running skips the finished stages.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert again.returncode == 0 and "=== stage" not in again.stdout
