"""Chat with a VideoChat2 / InternVideo2-Chat model about your own videos.

  python -m invideo_jax.chat --model NAME --checkpoint PATH --video VIDEO_OR_FOLDER [--question "..."]
      [--tokenizer DIR] [--llm_dir DIR] [--frames N] [--temperature 1.0] [--top_p 0.9] [--num_beams 1]
      [--max_new_tokens 200] [--greedy] [--seed 0] [--system TEXT] [--json]

NAME: internvideo2_chat_8b, videochat2_mistral_7b, videochat2_vicuna_7b (evaluate/videochat.py), or a config file
PATH.py[:ARG] of task 'videochat2' (e.g. configs/videochat2.py:mistral).
PATH: an Orbax directory of ours, or the official files (repeat --checkpoint, in order; --llm_dir for the base LLM a
VideoChat2 stage file lacks); the LLM tokenizer comes from --tokenizer, the config, or the checkpoint directory
(evaluate/videochat.py). With --question, each video (one file, or every video of a folder) gets that question;
without it, one video is discussed over several turns: each line read from stdin is a question, answered with the
conversation so far in the prompt (scriptable: `printf 'q1\\nq2\\n' | python -m invideo_jax.chat ...`). Tokens are
printed as they are generated; --json prints one JSON object per answer instead ({"video", "turn", "question",
"answer"}).

Sampling defaults are the official conversation.py's: do_sample with temperature 1.0, top_p 0.9, one beam, 200 new
tokens (--greedy: do_sample=False, as the benchmarks use). The frames are the model's count of segment centres,
resized to its short side and centre-cropped. A video that does not decode or a checkpoint that lacks a part gives a
one-line error and a non-zero exit status (1: some video failed; 2: the model or the arguments).
"""
import argparse
import json
import sys

OFFICIAL = dict(temperature=1.0, top_p=0.9, num_beams=1, max_new_tokens=200)


def parse_args(argv):
    from invideo_jax.evaluate import videochat

    parser = argparse.ArgumentParser(prog="python -m invideo_jax.chat", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    videochat.add_model_flags(parser)
    parser.add_argument("--video", required=True, help="a video file, or a folder of videos (with --question)")
    parser.add_argument("--question", default=None, help="one question (default: read questions from stdin)")
    parser.add_argument("--system", default="", help="text before the conversation (the system prompt)")
    parser.add_argument("--frames", type=int, default=0, help="frames per video (default: the model's)")
    parser.add_argument("--temperature", type=float, default=OFFICIAL["temperature"])
    parser.add_argument("--top_p", type=float, default=OFFICIAL["top_p"])
    parser.add_argument("--num_beams", type=int, default=OFFICIAL["num_beams"], help="only 1 (no beam search)")
    parser.add_argument("--max_new_tokens", type=int, default=OFFICIAL["max_new_tokens"])
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (do_sample=False)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--json", action="store_true", help="one JSON object per answer, nothing streamed")
    return parser.parse_args(argv)


def _error(message) -> None:
    print(f"error: {' '.join(str(message).split())[:1000]}", file=sys.stderr)


def _questions(args):
    """(turn, question) pairs: the one --question, or the non-empty stdin lines."""
    if args.question is not None:
        yield 0, args.question
        return
    turn = 0
    while True:
        if sys.stdin.isatty():
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield turn, line.strip()
            turn += 1


def converse(chat, video: str, args) -> bool:
    """Answers the questions about one video; False when it does not decode."""
    from invideo_jax.data.video import BadVideo
    from invideo_jax.evaluate import videochat

    try:
        visual = chat.visual_tokens(chat.read_clip(video), videochat.CHAT_INSTRUCTION)
    except BadVideo as e:
        _error(f"{video}: the video does not decode ({e})")
        return False
    history = []
    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=0.0 if args.greedy else args.temperature,
                    top_p=args.top_p)
    for turn, question in _questions(args):
        text = videochat.prompt(chat.template, question, history, system=args.system)
        if args.json:
            reply = chat.answer(visual, text, seed=args.seed + turn, **sampling)
            print(json.dumps({"video": video, "turn": turn, "question": question, "answer": reply}), flush=True)
        else:
            pieces = []
            for piece in chat.stream_answer(visual, text, seed=args.seed + turn, **sampling):
                pieces.append(piece)
                print(piece, end="", flush=True)
            print(flush=True)
            reply = videochat.clean_answer(chat.template, "".join(pieces))
        history.append((question, reply))
    return True


def main(argv) -> int:
    args = parse_args(argv)
    from invideo_jax import console, paths
    from invideo_jax.data import discovery
    from invideo_jax.evaluate import videochat

    console.drop_restore_notes()
    if args.num_beams != 1:
        _error(f"--num_beams={args.num_beams}: only 1 is supported (the official default; no beam search)")
        return 2
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.max_new_tokens < 1:
        _error(f"--temperature={args.temperature} must be >= 0, --top_p={args.top_p} in (0, 1] and "
               f"--max_new_tokens={args.max_new_tokens} >= 1")
        return 2
    try:
        videos = [path for path, _ in discovery.find_videos(paths.resolve(args.video))]
        if len(videos) > 1 and args.question is None:
            raise ValueError(f"--video={args.video} holds {len(videos)} videos: give --question, or one video for a "
                             "conversation")
        chat = videochat.load(args.model, args.checkpoint, tokenizer=args.tokenizer, llm_dir=args.llm_dir,
                              frames=args.frames, qformer_tokenizer_path=args.qformer_tokenizer)
    except (FileNotFoundError, ValueError) as e:
        _error(e)
        return 2
    failed = 0
    for video in videos:
        if len(videos) > 1 and not args.json:
            print(f"== {video}", flush=True)
        failed += not converse(chat, video, args)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
