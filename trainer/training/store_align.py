"""Store ↔ config alignment: take the data geometry from the store, or check it.

The store's manifest fixes the geometry a run must use: T (data.seq_len), the
stored top-k (data.k) or sampled draws per position (data.samples, for
loss.signal=sampled), the vocabulary (model.vocab_size), the captured teacher
layer (teacher.hidden_layer; OPRD's onpolicy.hidden_layers must all be stored)
and its width (teacher.d_model). With
`data.from_store=True` the trainer takes them from the store, and picks
loss.signal when the store holds only one of top-k and sampled logits (with
both, the config's loss.signal decides); otherwise every disagreement is
reported at once, each with the `--set key=value` that fixes it, before
anything compiles.

    resolved = resolve(config, schema, needs_topk, needs_hidden)   # frozen; `config` untouched

The user's config is never written to: `resolve` returns a new, frozen
config (`config.resolved_config`) holding the store's geometry, which the
run then uses everywhere (its config.json, the step, the loader).

`needs_topk` below means "the run has a KD term": which stored signal that
term reads is `config.loss.signal`.
"""

from __future__ import annotations

from store import SchemaMismatchError, StoreSchema
from trainer.training.config import ConfigError, config_get, oprd_layers, resolved_config
from trainer.training.loss_options import Signal, parse_signal


def store_signal(schema: StoreSchema) -> Signal | None:
    """The one KD signal the store holds; None when it holds both or neither."""
    has = [s for s, n in ((Signal.TOPK, schema.k), (Signal.SAMPLED, schema.samples)) if n >= 1]
    return has[0] if len(has) == 1 else None


def signal_choice(config, schema: StoreSchema) -> str:
    """Which KD signal a data.from_store run reads, and why (the line the trainer prints)."""
    only = store_signal(schema)
    if schema.k < 1 and schema.samples < 1:
        return "the store holds no teacher logits"
    if only is not None:
        return f"the store holds only {only.value} logits: loss.signal={only.value}"
    return (
        f"the store holds top-{schema.k} and {schema.samples} sampled logits per position: "
        f"loss.signal={config.loss.signal}, the config's choice (--set loss.signal="
        f"{'topk' if config.loss.signal == Signal.SAMPLED.value else 'sampled'} for the other)"
    )


def geometry(config, schema: StoreSchema, needs_topk: bool, needs_hidden: bool) -> dict:
    """{config key: the value the store requires} for the fields the run uses."""
    wanted = {"data.seq_len": schema.seq_len, "model.vocab_size": schema.vocab_size}
    sampled = parse_signal(config.loss.signal) is Signal.SAMPLED
    if needs_topk and not sampled and schema.k >= 1:
        wanted["data.k"] = schema.k
    if needs_topk and sampled and schema.samples >= 1:
        wanted["data.samples"] = schema.samples
    if needs_hidden and schema.hidden_layers:
        layers = list(schema.hidden_layers)
        # A config layer that the store holds is kept; one stored layer is the only choice.
        if config.teacher.hidden_layer in layers:
            wanted["teacher.hidden_layer"] = config.teacher.hidden_layer
        elif len(layers) == 1:
            wanted["teacher.hidden_layer"] = layers[0]
        wanted["teacher.d_model"] = schema.hidden_dim
    return wanted


def geometry_changes(config, schema: StoreSchema, needs_topk: bool, needs_hidden: bool) -> dict:
    """{config key: (config's value, the store's)} for every field `data.from_store` takes.

    loss.signal first: the other keys (data.k or data.samples) follow the signal.
    """
    changed = {}
    only = store_signal(schema)
    if needs_topk and only is not None and parse_signal(config.loss.signal) is not only:
        changed["loss.signal"] = (config.loss.signal, only.value)
    # The rest of the geometry is read under the signal the run will use.
    view = resolved_config(config, {k: new for k, (_, new) in changed.items()})
    for key, value in geometry(view, schema, needs_topk, needs_hidden).items():
        old = config_get(view, key)
        if old != value:
            changed[key] = (old, value)
    return changed


def resolve(config, schema: StoreSchema, needs_topk: bool, needs_hidden: bool):
    """The run's resolved config: frozen, paths absolute, the store's geometry with data.from_store.

    Args:
        config: the user's config (not modified).
        schema: the store's schema.
        needs_topk, needs_hidden: whether the run has a KD / hidden-state term.

    Returns:
        An `ml_collections.FrozenConfigDict`. Its geometry comes from a store
        whose schema was validated when it was written, so it is not validated
        again; `check_store` then compares it with the store.
    """
    changes = (
        geometry_changes(config, schema, needs_topk, needs_hidden) if config.data.from_store else {}
    )
    return resolved_config(config, {key: new for key, (_, new) in changes.items()})


def mismatches(config, schema: StoreSchema, needs_topk: bool, needs_hidden: bool) -> list[str]:
    """Every disagreement of config and store, each naming the override that fixes it."""
    found = []
    for key, value in geometry(config, schema, needs_topk, needs_hidden).items():
        have = config_get(config, key)
        # data.k=0 / data.samples=0 mean "any stored k / S".
        if have != value and not (key in ("data.k", "data.samples") and have == 0):
            found.append(f"{key}={have!r} but the store has {value!r} (--set {key}={value})")
    if (
        needs_hidden
        and schema.hidden_layers
        and "teacher.hidden_layer" not in geometry(config, schema, needs_topk, needs_hidden)
    ):
        found.append(
            f"teacher.hidden_layer={config.teacher.hidden_layer} is not stored "
            f"(stored: {list(schema.hidden_layers)}; --set teacher.hidden_layer="
            f"{schema.hidden_layers[0]})"
        )
    several = needs_hidden and schema.hidden_layers and config.onpolicy.hidden_layers
    missing = [x for x in oprd_layers(config) if x not in schema.hidden_layers] if several else []
    if missing:
        found.append(
            f"onpolicy.hidden_layers={config.onpolicy.hidden_layers!r} but layer(s) {missing} "
            f"are not stored (stored: {list(schema.hidden_layers)}; dump them with "
            f"`python -m pipelines.dump ... --hidden-layers "
            f"{' '.join(map(str, oprd_layers(config)))}`, or drop them from the list)"
        )
    stored_sha = schema.tokenizer.get("sha256")
    wanted_sha = config.store.tokenizer_sha256
    if wanted_sha and wanted_sha != stored_sha:
        found.append(
            f"store.tokenizer_sha256={wanted_sha[:12]}… but the store was dumped "
            f"with tokenizer {str(stored_sha)[:12]}… (point store.url at a store of "
            f"your tokenizer, or --set store.tokenizer_sha256={stored_sha})"
        )
    return found


def check_store(
    config, schema: StoreSchema, url: str, needs_topk: bool, needs_hidden: bool
) -> None:
    """Raises one SchemaMismatchError listing every mismatch (or a store lacking a signal)."""
    sampled = parse_signal(config.loss.signal) is Signal.SAMPLED
    if needs_topk and not sampled and schema.k < 1:
        other = (
            f"--set loss.signal=sampled (the store holds S={schema.samples} sampled "
            f"logits per position)"
            if schema.samples >= 1
            else "--set method=nll"
        )
        raise ConfigError(
            f"method {config.method} needs teacher top-k but store {url} has k=0; dump top-k "
            f"with `python -m pipelines.dump --teacher ...` or use {other}"
        )
    if needs_topk and sampled and schema.samples < 1:
        other = (
            f"--set loss.signal=topk (the store holds top-{schema.k})"
            if schema.k >= 1
            else "--set method=nll"
        )
        raise ConfigError(
            f"loss.signal=sampled needs sampled teacher logits but store {url} has none "
            f"(samples=0); dump them with samples > 0 or use {other}"
        )
    if needs_hidden and not schema.hidden_layers:
        raise ConfigError(
            f"method {config.method} needs teacher activations but store {url} holds none; "
            f"dump them with `python -m pipelines.dump --teacher ... --hidden-layers L` or "
            f"use --set method=kd"
        )
    found = mismatches(config, schema, needs_topk, needs_hidden)
    if found:
        raise SchemaMismatchError(
            f"store {url} disagrees with the config on {len(found)} field(s): "
            + "; ".join(found)
            + "; or pass --set data.from_store=True to take the store's"
        )
