"""`python -m teacher_dump.convert --hf-dir DIR --out CKPT [--overwrite]`.

The entry point stays here, where teachers are prepared; the import itself is
model I/O and lives in `trainer.model.hf_import`.
"""
