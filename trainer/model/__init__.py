"""The model: what a checkpoint is, independent of how it was trained.

* ``model_config`` — ModelConfig and the registry of named sizes.
* ``gemma3``       — the Gemma 3 decoder: init, forward, unembed.
* ``regressors``   — the trained heads mapping student to teacher hidden states.
* ``layout``       — the files of a model checkpoint; reading its config without JAX.
* ``model_io``     — save/load a checkpoint (Orbax params + JSON).
* ``hf_import``    — Hugging Face safetensors -> a checkpoint
  (CLI: ``python -m teacher_dump.convert``).
* ``hf_export``    — a checkpoint -> a Hugging Face Gemma3ForCausalLM directory
  (CLI: ``python -m trainer.export_hf``); ``hf_layout`` is the one tensor-name
  table both directions use, ``hf_tokenizer`` the tokenizer files.
* ``tokenizer``    — the SentencePiece tokenizer (train, load, describe).
* ``tiling``       — token tiling: run a function over sequence tiles of [B, T, ...].
* ``errors``       — ConfigError, ModelInputError, ModelIOError (the JAX side's user errors).
* ``cli_guard``    — keeps `python -m` entry points from importing a working-directory
  folder named like our packages (stdlib only; every entry point runs it first).

Imports no other unit of this repository; everything else builds on it.
"""
