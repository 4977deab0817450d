"""A tiny random VideoChat checkpoint of ours (configs/videochat2.py:tiny, 8 frames of 28 px), its tokenizer and
synthetic videos, for the chat and MVBench tests. The LM head's EOS column is zeroed so that greedy replies do not
end at once (every other logit of this random model is drawn around zero, the largest well above it)."""
import os

import numpy as np

NAME = "configs/videochat2.py:tiny,dtype=float32,scan=False,remat=none"


def build(root: str) -> dict:
    """{'tokenizer', 'checkpoint', 'no_project_up' (a checkpoint lacking a part), 'videos' (3 mp4 files),
    'bad_video' (not a video)} under `root`."""
    from invideo_jax.convert.api import save
    from invideo_jax.data import llm_tokenizer, synthetic
    from invideo_jax.data.video import write_video
    from tests import hf_tiny
    from tests.tiny_models import random_variables

    out = {"tokenizer": os.path.join(root, "tokenizer"), "checkpoint": os.path.join(root, "checkpoint"),
           "no_project_up": os.path.join(root, "no_project_up"), "videos": [], "bad_video": os.path.join(root,
                                                                                                        "bad.mp4")}
    hf_tiny.train_tokenizer(out["tokenizer"], vocab_size=128)
    eos = llm_tokenizer.load(out["tokenizer"]).eos_id
    variables = random_variables(NAME, seed=1)
    variables["params"]["llm"]["lm_head"]["kernel"][:, eos] = 0
    save(variables, out["checkpoint"])
    save({"params": {k: v for k, v in variables["params"].items() if k != "project_up"}}, out["no_project_up"])
    rng = np.random.default_rng(0)
    for label in range(3):
        path = os.path.join(root, "videos", f"clip{label}.mp4")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_video(path, synthetic.render_clip(label, rng, num_frames=24, size=48)[0], fps=8)
        out["videos"].append(path)
    with open(out["bad_video"], "w") as f:
        f.write("not a video")
    return out
