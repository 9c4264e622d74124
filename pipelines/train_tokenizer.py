"""CLI: train a SentencePiece tokenizer on input files.

`python -m pipelines.train_tokenizer --input GLOB [GLOB ...] --model-prefix PREFIX`
(`--input` takes several paths, globs or directories, as the dump's does). The
tokenizer itself is `trainer.model.tokenizer`; this entry point adds the
corpus reading (`pipelines.inputs`: Beam filesystems, decompression).
"""

import argparse
import sys

# Light imports only at the top: `--help` and bad flags are answered before Beam loads
# (pipelines.inputs reads through Beam's filesystems; about a second to import).
from pipelines.errors import PipelineError
from trainer.model import tokenizer


def main(argv=None):
    """CLI: train a tokenizer on input files; prints the model path and its info."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train_tokenizer",
        description="Train a SentencePiece unigram tokenizer (byte fallback) on input text.",
    )
    parser.add_argument(
        "--input",
        action="extend",
        nargs="+",
        required=True,
        help="input files, globs or directories (several, and repeatable): "
        ".txt, .jsonl[.gz], .parquet",
    )
    parser.add_argument("--model-prefix", required=True, help="writes PREFIX.model, PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument(
        "--max-sentences",
        type=int,
        default=1_000_000,
        help="train on the first N non-empty lines of the corpus",
    )
    parser.add_argument(
        "--num-threads",
        type=int,
        default=tokenizer.DEFAULT_THREADS,
        help="trainer threads; the model depends on it, keep it fixed",
    )
    parser.add_argument("--input-format", default="auto", help="auto|text|jsonl|parquet")
    parser.add_argument("--decode-errors", default="strict", help="strict|replace")
    args = parser.parse_args(argv)
    from pipelines import inputs

    try:
        corpus = inputs.iter_corpus(args.input, args.input_format, args.decode_errors)
        path = tokenizer.train_tokenizer(
            corpus,
            args.model_prefix,
            args.vocab_size,
            max_sentences=args.max_sentences,
            num_threads=args.num_threads,
        )
        info = tokenizer.tokenizer_info(path)
    except (PipelineError, tokenizer.TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
