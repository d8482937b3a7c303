"""What a run keeps on disk: atomic writes, the run folder, model.h5, checkpoints."""
