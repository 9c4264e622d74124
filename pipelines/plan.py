"""Launcher-side checks and the store schemas of a dump, before any work.

Everything that can be validated without reading the corpus is validated
here, in the launching process, so that bad flags, a missing file, or a
tokenizer that does not match the teacher fail in a second with one line,
and never after a cluster has started or a store has been created.
"""

import dataclasses
import json

from apache_beam.io.filesystems import FileSystems

import store
from pipelines import inputs, options, packing
from pipelines.errors import OptionsError, VocabMismatchError
from trainer.model import layout, tokenizer
from trainer.model.tokenizer import TokenizerError


@dataclasses.dataclass(frozen=True)
class DumpPlan:
    """What a dump run will do.

    Attributes:
        paths: sorted input files.
        model_bytes: the serialized SentencePiece model (shipped to workers
            inside the DoFn, so workers need no access to the launcher's files).
        tokenizer_info: tokenizer.tokenizer_info of it.
        teacher_cfg: the teacher's ModelConfig (with any dtype override), or
            None for a tokens-only dump (no --teacher).
        hidden_layers: captured layers.
        schema: StoreSchema of the main store.
        heldout_schema: StoreSchema of the held-out store, or None.
        committed_before: units of the main store committed when the run was
            launched (skipped); set by `pipelines.dump.build_pipeline`.
        heldout_committed_before: the same for the held-out store.
        input_store: the pipelines.store_input.InputStore scored instead of
            text (--input-store), or None.
    """

    paths: list
    model_bytes: bytes
    tokenizer_info: dict
    teacher_cfg: object
    hidden_layers: tuple
    schema: store.StoreSchema
    heldout_schema: object
    committed_before: frozenset = frozenset()
    heldout_committed_before: frozenset = frozenset()
    input_store: object = None


def _read_tokenizer(path):
    try:
        with FileSystems.open(path) as f:
            return f.read()
    except OSError as e:  # missing, unreadable, unreachable (BeamIOError is an OSError)
        raise TokenizerError(
            f"cannot read tokenizer model {path} ({_first_line(e)}); train one with "
            "`python -m pipelines.train_tokenizer --input GLOB --model-prefix PREFIX`"
        ) from None


def _teacher_config(path):
    """The teacher's ModelConfig, from its config.json (no JAX, no weights)."""
    try:
        with FileSystems.open(FileSystems.join(str(path), layout.CONFIG_FILE)) as f:
            text = f.read().decode("utf-8")
    except OSError as e:  # Beam's BeamIOError is an OSError
        raise layout.ModelIOError(
            f"teacher checkpoint {path} has no readable {layout.CONFIG_FILE} "
            f"({_first_line(e)}); pass a directory written by model_io.save_model "
            "or teacher_dump.convert"
        ) from None
    return layout.parse_config(text, path)


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _teacher_metadata(path):
    """The metadata model_io.save_model wrote next to the config (params
    sha256 "fingerprint"; "tokenizer_sha256" for teachers our trainer made).

    Read from metadata.json (model_io's documented layout) so the launcher
    never loads the teacher's weights.
    """
    try:
        with FileSystems.open(FileSystems.join(str(path), layout.METADATA_FILE)) as f:
            return json.loads(f.read())
    except (
        OSError,
        ValueError,
    ) as e:  # missing / unreadable (BeamIOError is an OSError) / not JSON
        raise layout.ModelIOError(
            f"teacher checkpoint {path} has no readable metadata.json ({_first_line(e)}); "
            "pass a directory written by model_io.save_model"
        ) from None


def _hidden_layers(requested, num_layers):
    if requested is None:
        return (num_layers // 2,)
    layers = tuple(int(l) for l in requested)
    bad = [l for l in layers if not 1 <= l <= num_layers]
    if bad or len(set(layers)) != len(layers):
        raise OptionsError(
            f"--hidden-layers {list(layers)} must be distinct block counts in [1, {num_layers}] "
            f"(the teacher has {num_layers} layers; default {num_layers // 2})"
        )
    return layers


def make_plan(opts):
    """Validates a DumpOptions view and builds the DumpPlan.

    Raises:
        OptionsError, InputError, TokenizerError, VocabMismatchError,
        model_io.ModelIOError: with one-line messages naming the fix.
    """
    options.validate(opts)
    if opts.input_store:
        return _store_input_plan(opts)
    paths = inputs.expand_inputs(opts.input)
    for path in paths:
        inputs.detect_format(path, opts.input_format)
        inputs.check_readable(path)
    inputs.parse_enum(inputs.DecodeErrors, opts.decode_errors, "--decode-errors")

    model_bytes = _read_tokenizer(opts.tokenizer)
    tok_info = tokenizer.info_from_bytes(model_bytes, name=opts.tokenizer)
    train_packing = dict(
        packing.PACKING_RULE,
        split=opts.split,  # --split; the manifest records it too
        heldout_fraction=opts.heldout_fraction,
    )
    if not opts.teacher:
        return _tokens_only_plan(opts, paths, model_bytes, tok_info, train_packing)
    cfg, layers, teacher = _teacher(
        opts,
        tok_info,
        vocab_fix=f"tokenizer {opts.tokenizer} has {tok_info['vocab_size']} pieces",
        sha_what=str(opts.tokenizer),
        fix="use the tokenizer the teacher was trained with",
        sha_fix="pass the tokenizer the teacher was trained with",
    )
    schema = store.StoreSchema(
        seq_len=opts.seq_len,
        k=opts.k,
        vocab_size=cfg.vocab_size,
        hidden_layers=layers,
        hidden_dim=cfg.d_model if layers else 0,
        profile=opts.profile,
        rows_per_unit=opts.rows_per_unit,
        tokenizer=tok_info,
        teacher=teacher,
        packing=train_packing,
        samples=opts.samples,
        token_logprob=_token_logprob(opts, loss_mask=False),
    )
    _check_some_signal(opts, schema)
    return DumpPlan(
        paths,
        model_bytes,
        tok_info,
        cfg,
        layers,
        schema,
        _heldout_schema(opts, tok_info, train_packing),
    )


def _teacher(opts, tok_info, vocab_fix, sha_what, fix, sha_fix):
    """(config, captured layers, the manifest's teacher entry), checked against the rows' tokenizer.

    Args:
        opts: the DumpOptions view.
        tok_info: the tokenizer of the rows ({"sha256", "vocab_size", ...}; sha256 may be absent).
        vocab_fix, fix: the rows' vocabulary, and the fix, for a vocab-size mismatch message.
        sha_what, sha_fix: the rows' tokenizer, and the fix, for a sha256 mismatch message.
    """
    cfg = _teacher_config(opts.teacher)
    if opts.teacher_dtype:
        cfg = cfg.replace(dtype=opts.teacher_dtype)
    if tok_info["vocab_size"] != cfg.vocab_size:
        raise VocabMismatchError(
            f"{vocab_fix} but teacher {opts.teacher} has vocab_size={cfg.vocab_size}; {fix}"
        )
    if opts.k > cfg.vocab_size:
        raise OptionsError(f"--k={opts.k} exceeds the vocabulary ({cfg.vocab_size}); lower --k")
    layers = _hidden_layers(opts.hidden_layers, cfg.num_layers)
    metadata = _teacher_metadata(opts.teacher)
    trained_with = metadata.get("tokenizer_sha256")  # absent for converted HF checkpoints
    rows_sha = tok_info.get("sha256")
    if trained_with and rows_sha and trained_with != rows_sha:
        raise VocabMismatchError(
            f"teacher {opts.teacher} was trained with tokenizer sha256 {trained_with[:12]}… but "
            f"{sha_what} has {rows_sha[:12]}…; {sha_fix}"
        )
    if "fingerprint" not in metadata:
        # model_io.save_model always writes one; the manifest must name its teacher.
        raise layout.ModelIOError(
            f"teacher checkpoint {opts.teacher}: metadata.json has no params fingerprint; "
            "re-save it with model_io.save_model (or teacher_dump.convert for Hugging Face "
            "weights)"
        )
    teacher = {
        "name": cfg.name,
        "fingerprint": str(metadata["fingerprint"]),
        "num_layers": cfg.num_layers,
        "d_model": cfg.d_model,
        "config": cfg.to_dict(),
        "top_p": opts.top_p,
    }
    return cfg, layers, teacher


def _token_logprob(opts, loss_mask):
    """--token-logprob: on, off, or auto (on iff the rows carry a loss mask: rollouts)."""
    return {"on": True, "off": False, "auto": bool(loss_mask)}[opts.token_logprob]


def _check_some_signal(opts, schema):
    # Activations count when asked for by name (the default L//2 layer alone is not a reason
    # to run the teacher without its logits).
    named_layers = bool(opts.hidden_layers and schema.hidden_layers)
    if not (schema.k or schema.samples or schema.token_logprob or named_layers):
        raise OptionsError(
            "--k 0 leaves no teacher signal (no --samples, no --hidden-layers, and "
            "--token-logprob is off for this input); pass --k > 0, --samples > 0, "
            "--hidden-layers L ... or --token-logprob on"
        )


def _store_input_plan(opts):
    """--input-store: the rows of a tokens store, scored as they are (pipelines.store_input)."""
    from pipelines import store_input  # Beam's transforms: only for this kind of dump

    source = store_input.open_input(opts.input_store, opts.seq_len)
    tok_info = dict(source.schema.tokenizer, vocab_size=source.schema.vocab_size)
    trained_with = _teacher_metadata(opts.teacher).get("tokenizer_sha256")
    if trained_with and not tok_info.get("sha256"):
        raise VocabMismatchError(
            f"--input-store {opts.input_store} records no tokenizer sha256, so its rows cannot be "
            f"checked against teacher {opts.teacher}'s tokenizer; write the rollouts with the "
            "tokenizer entry of the store their prompts came from"
        )
    cfg, layers, teacher = _teacher(
        opts,
        tok_info,
        vocab_fix=f"--input-store {opts.input_store} has vocab_size={source.schema.vocab_size}",
        sha_what=f"--input-store {opts.input_store}'s tokenizer",
        fix="score rollouts with a teacher of the student's vocabulary",
        sha_fix="score rollouts with a teacher of the student's tokenizer",
    )
    schema = store.StoreSchema(
        seq_len=source.schema.seq_len,
        k=opts.k,
        vocab_size=cfg.vocab_size,
        hidden_layers=layers,
        hidden_dim=cfg.d_model if layers else 0,
        profile=opts.profile,
        rows_per_unit=opts.rows_per_unit,
        tokenizer=source.schema.tokenizer,
        teacher=teacher,
        packing=store_input.source_packing(source, opts.split),
        samples=opts.samples,
        loss_mask=source.schema.loss_mask,
        token_logprob=_token_logprob(opts, source.schema.loss_mask),
    )
    _check_some_signal(opts, schema)
    return DumpPlan([], b"", tok_info, cfg, layers, schema, None, input_store=source)


def _tokens_schema(opts, tok_info, packing_rule):
    """A tokens-only (k=0) store: teacher pre-training data or a held-out split."""
    return store.StoreSchema(
        seq_len=opts.seq_len,
        k=0,
        vocab_size=tok_info["vocab_size"],
        hidden_layers=(),
        hidden_dim=0,
        profile="exact",
        rows_per_unit=opts.rows_per_unit,
        tokenizer=tok_info,
        teacher={},
        packing=packing_rule,
    )


def _heldout_schema(opts, tok_info, train_packing):
    if opts.heldout_fraction <= 0:
        return None
    return _tokens_schema(opts, tok_info, dict(train_packing, split="heldout"))


def _tokens_only_plan(opts, paths, model_bytes, tok_info, train_packing):
    """No --teacher: the main store holds the token spine only."""
    return DumpPlan(
        paths,
        model_bytes,
        tok_info,
        None,
        (),
        _tokens_schema(opts, tok_info, train_packing),
        _heldout_schema(opts, tok_info, train_packing),
    )
